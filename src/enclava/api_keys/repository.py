"""SQL for API keys. Owned rows are always read through ``visible_keys``."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import Select, bindparam, inspect, select
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


def _row_reader(model: Any, label_prefix: str = "") -> tuple[list[Any], Any]:
    """Labelled Core columns of ``model`` and a function turning one result row into a detached
    instance (no session, no identity map: cheaper per call)."""
    attrs = [
        (attr.key, label_prefix + attr.key, attr.columns[0]) for attr in inspect(model).column_attrs
    ]
    columns = [column.label(label) for _, label, column in attrs]

    def build(row: Any) -> Any:
        mapping = row._mapping
        return model(**{key: mapping[label] for key, label, _ in attrs})

    return columns, build


_KEY_COLUMNS, _build_key = _row_reader(ApiKey, "key_")
_OWNER_COLUMNS, _build_owner = _row_reader(User, "owner_")
# A key and its owner in one round trip (the foreign key cascades, so every key has one).
_KEY_AND_OWNER_BY_HASH = (
    select(*_KEY_COLUMNS, *_OWNER_COLUMNS)
    .join_from(ApiKey, User, ApiKey.user_id == User.id)
    .where(ApiKey.key_hash == bindparam("key_hash"))
)
_HASHES_BY_OWNER = select(ApiKey.key_hash).where(ApiKey.user_id == bindparam("user_id"))


async def read_key_and_owner(conn: AsyncConnection, key_hash: str) -> tuple[ApiKey, User] | None:
    """The key with this hash and its owner, detached (for authentication on a read-only
    connection)."""
    row = (await conn.execute(_KEY_AND_OWNER_BY_HASH, {"key_hash": key_hash})).first()
    return None if row is None else (_build_key(row), _build_owner(row))


async def owned_key_hashes(conn: AsyncConnection | AsyncSession, user_id: uuid.UUID) -> list[str]:
    """The hashes of every key ``user_id`` owns, revoked ones included."""
    result = await conn.execute(_HASHES_BY_OWNER, {"user_id": user_id})
    return list(result.scalars())
