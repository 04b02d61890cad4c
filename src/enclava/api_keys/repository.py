"""SQL for API keys. Owned rows are always read through ``visible_keys``."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, inspect, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.models import ApiKey, User


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


def _row_reader(model: Any) -> tuple[Any, Any]:
    """A Core SELECT of ``model``'s columns by a bound parameter, and a function turning one
    result row into a detached instance (no session, no identity map: cheaper per call)."""
    attrs = [(attr.key, attr.columns[0]) for attr in inspect(model).column_attrs]
    query = select(*(column.label(key) for key, column in attrs))

    def build(row: Any) -> Any:
        mapping = row._mapping
        return model(**{key: mapping[key] for key, _ in attrs})

    return query, build


_KEY_QUERY, _build_key = _row_reader(ApiKey)
_KEY_BY_HASH = _KEY_QUERY.where(ApiKey.key_hash == bindparam("key_hash"))
_OWNER_QUERY, _build_user = _row_reader(User)
_OWNER_BY_ID = _OWNER_QUERY.where(User.id == bindparam("user_id"))


async def read_by_hash(conn: AsyncConnection, key_hash: str) -> ApiKey | None:
    """The key with this hash, detached (for authentication on a read-only connection)."""
    row = (await conn.execute(_KEY_BY_HASH, {"key_hash": key_hash})).first()
    return None if row is None else _build_key(row)


async def read_owner(conn: AsyncConnection, user_id: uuid.UUID) -> User | None:
    """A key's owner, detached (for authentication on a read-only connection)."""
    row = (await conn.execute(_OWNER_BY_ID, {"user_id": user_id})).first()
    return None if row is None else _build_user(row)


async def set_fields(session: AsyncSession, key_id: uuid.UUID, **values: Any) -> None:
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id == key_id)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


async def touch(session: AsyncSession, key_id: uuid.UUID, when: datetime) -> None:
    await set_fields(session, key_id, last_used_at=when)
