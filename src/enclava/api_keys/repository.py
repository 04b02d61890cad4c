"""SQL for API keys. Owned rows are always read through ``visible_keys``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.models import ApiKey


def visible_keys(subject: AuthSubject) -> Select[ApiKey]:
    """Keys ``subject`` may see: all of them for a signed-in admin, else their own."""
    query = select(ApiKey)
    if not subject.sees_everything:
        query = query.where(ApiKey.user_id == subject.user_id)
    return query


async def get_visible(
    session: AsyncSession, subject: AuthSubject, key_id: uuid.UUID, *, for_update: bool = False
) -> ApiKey | None:
    query = visible_keys(subject).where(ApiKey.id == key_id)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def list_visible(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    user_id: uuid.UUID | None,
    include_revoked: bool,
    offset: int,
    limit: int,
) -> list[ApiKey]:
    query = visible_keys(subject)
    if user_id is not None:
        query = query.where(ApiKey.user_id == user_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    query = query.order_by(ApiKey.created_at.desc(), ApiKey.id).offset(offset).limit(limit)
    return list((await session.execute(query)).scalars())


async def get_by_hash(session: AsyncSession, key_hash: str) -> ApiKey | None:
    result = await session.execute(select(ApiKey).where(ApiKey.key_hash == key_hash))
    return result.scalar_one_or_none()


async def set_fields(session: AsyncSession, key_id: uuid.UUID, **values: Any) -> None:
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def touch(session: AsyncSession, key_id: uuid.UUID, when: datetime) -> None:
    await set_fields(session, key_id, last_used_at=when)
