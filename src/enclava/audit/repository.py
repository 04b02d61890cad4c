"""SQL for audit rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import AuditLog


def add(session: AsyncSession, entry: AuditLog) -> None:
    session.add(entry)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """Which rows to read; ``owner_id`` is forced to the caller for non-admins."""

    owner_id: uuid.UUID | None = None
    user_id: uuid.UUID | None = None
    action: str | None = None
    resource_type: str | None = None
    start: datetime | None = None
    end: datetime | None = None


def _filtered(query: Select[AuditLog], f: AuditFilter) -> Select[AuditLog]:
    if f.owner_id is not None:
        query = query.where(AuditLog.user_id == f.owner_id)
    if f.user_id is not None:
        query = query.where(AuditLog.user_id == f.user_id)
    if f.action is not None:
        query = query.where(AuditLog.action == f.action)
    if f.resource_type is not None:
        query = query.where(AuditLog.resource_type == f.resource_type)
    if f.start is not None:
        query = query.where(AuditLog.created_at >= f.start)
    if f.end is not None:
        query = query.where(AuditLog.created_at < f.end)
    return query


async def page(
    session: AsyncSession, f: AuditFilter, *, offset: int, limit: int
) -> tuple[list[AuditLog], int]:
    total = await session.scalar(
        _filtered(select(AuditLog), f).with_only_columns(func.count(), maintain_column_froms=True)
    )
    query = (
        _filtered(select(AuditLog), f)
        .order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars()), int(total or 0)


async def batch_after(
    session: AsyncSession,
    f: AuditFilter,
    *,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[AuditLog]:
    """The next ``limit`` rows, newest first, strictly after the ``(created_at, id)`` cursor."""
    query = _filtered(select(AuditLog), f)
    if after is not None:
        created_at, row_id = after
        query = query.where(
            or_(
                AuditLog.created_at < created_at,
                and_(AuditLog.created_at == created_at, AuditLog.id < row_id),
            )
        )
    query = query.order_by(AuditLog.created_at.desc(), AuditLog.id.desc()).limit(limit)
    return list((await session.execute(query)).scalars())
