"""SQL for runtime secrets."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import AppSecret


async def get(session: AsyncSession, name: str) -> AppSecret | None:
    return await session.get(AppSecret, name)


async def list_all(session: AsyncSession) -> list[AppSecret]:
    result = await session.execute(select(AppSecret).order_by(AppSecret.name))
    return list(result.scalars())


def add(session: AsyncSession, secret: AppSecret) -> None:
    session.add(secret)


async def delete(session: AsyncSession, secret: AppSecret) -> None:
    await session.delete(secret)
