"""SQL for usage rows."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import UsageRecord


def add(session: AsyncSession, record: UsageRecord) -> None:
    session.add(record)
