"""SQL for audit rows."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import AuditLog


def add(session: AsyncSession, entry: AuditLog) -> None:
    session.add(entry)
