"""SQL for users and their sign-in sessions (refresh-token families)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import RefreshToken, User


async def get_user(
    session: AsyncSession, user_id: uuid.UUID, *, for_update: bool = False
) -> User | None:
    return await session.get(User, user_id, with_for_update=for_update or None)


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email.strip().lower()))
    return result.scalar_one_or_none()


async def count_users(session: AsyncSession) -> int:
    return int(await session.scalar(select(func.count()).select_from(User)) or 0)


async def count_active_admins(session: AsyncSession) -> int:
    query = select(func.count()).select_from(User).where(User.role == "admin", User.is_active)
    return int(await session.scalar(query) or 0)


async def list_users(session: AsyncSession, *, offset: int, limit: int) -> list[User]:
    result = await session.execute(
        select(User).order_by(User.created_at, User.id).offset(offset).limit(limit)
    )
    return list(result.scalars())


async def delete_user(session: AsyncSession, user_id: uuid.UUID) -> None:
    await session.execute(
        delete(User).where(User.id == user_id).execution_options(synchronize_session=False)
    )


async def get_refresh_token(session: AsyncSession, token_hash: str) -> RefreshToken | None:
    result = await session.execute(
        select(RefreshToken).where(RefreshToken.token_hash == token_hash)
    )
    return result.scalar_one_or_none()


async def claim_refresh_token(session: AsyncSession, token_id: uuid.UUID, now: datetime) -> bool:
    """Mark an unused, unrevoked token used; False if another request got there first."""
    result = await session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.id == token_id,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def revoke_families(
    session: AsyncSession,
    *,
    now: datetime,
    family_ids: list[uuid.UUID] | None = None,
    user_id: uuid.UUID | None = None,
    except_family: uuid.UUID | None = None,
) -> None:
    """Revoke sessions by family id, or every session of ``user_id`` (but ``except_family``)."""
    if family_ids is None and user_id is None:
        raise ValueError("revoke_families needs family_ids or user_id")
    query = update(RefreshToken).where(RefreshToken.revoked_at.is_(None))
    if family_ids is not None:
        query = query.where(RefreshToken.family_id.in_(family_ids))
    if user_id is not None:
        query = query.where(RefreshToken.user_id == user_id)
    if except_family is not None:
        query = query.where(RefreshToken.family_id != except_family)
    await session.execute(query.values(revoked_at=now).execution_options(synchronize_session=False))


async def session_is_active(session: AsyncSession, family_id: uuid.UUID) -> bool:
    """A session lives while some token of its family is unrevoked (revocation takes all)."""
    query = (
        select(RefreshToken.id)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .limit(1)
    )
    return (await session.scalar(query)) is not None
