"""SQL for budgets: every query for owned rows goes through ``visible_to``."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import or_, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.models import ApiKey, Budget


def visible_to(subject: AuthSubject) -> Any:
    """Admins see every budget; a user sees their own and those of their keys."""
    if subject.is_admin:
        return true()
    own_keys = select(ApiKey.id).where(ApiKey.user_id == subject.user_id)
    return or_(Budget.user_id == subject.user_id, Budget.api_key_id.in_(own_keys))


async def list_budgets(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[Budget]:
    query = select(Budget).where(visible_to(subject))
    if user_id is not None:
        query = query.where(Budget.user_id == user_id)
    if api_key_id is not None:
        query = query.where(Budget.api_key_id == api_key_id)
    query = query.order_by(Budget.created_at, Budget.id).offset(offset).limit(limit)
    return list((await session.execute(query)).scalars())


async def get_budget(
    session: AsyncSession, subject: AuthSubject, budget_id: uuid.UUID
) -> Budget | None:
    query = select(Budget).where(Budget.id == budget_id, visible_to(subject))
    return (await session.execute(query)).scalar_one_or_none()


async def get_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    return await session.get(ApiKey, key_id)
