"""SQL for collections, shares and documents.

Tenant scoping has one source of truth: ``access_clause``. Every query that reads collections
or documents for a user goes through it, so a row the user may not see is indistinguishable
from a row that does not exist.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import RagCollection, RagCollectionShare, RagDocument, User

Need = Literal["read", "write", "owner"]
UNFINISHED = ("queued", "processing")


def access_clause(user_id: uuid.UUID, need: Need) -> ColumnElement[bool]:
    """Collections ``user_id`` owns, or that were shared with them at the level ``need``."""
    owned = RagCollection.user_id == user_id
    if need == "owner":
        return owned
    permissions = ("read", "write") if need == "read" else ("write",)
    shared = exists().where(
        RagCollectionShare.collection_id == RagCollection.id,
        RagCollectionShare.user_id == user_id,
        RagCollectionShare.permission.in_(permissions),
    )
    return or_(owned, shared)


async def get_collection(
    session: AsyncSession, collection_id: uuid.UUID, *, user_id: uuid.UUID, need: Need
) -> RagCollection | None:
    result = await session.execute(
        select(RagCollection).where(RagCollection.id == collection_id, access_clause(user_id, need))
    )
    return result.scalar_one_or_none()


async def get_collection_unscoped(
    session: AsyncSession, collection_id: uuid.UUID
) -> RagCollection | None:
    """For administrators managing shares and for jobs; never for a user's own reads."""
    return await session.get(RagCollection, collection_id)


async def share_permissions(
    session: AsyncSession, user_id: uuid.UUID, collection_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    if not collection_ids:
        return {}
    result = await session.execute(
        select(RagCollectionShare.collection_id, RagCollectionShare.permission).where(
            RagCollectionShare.user_id == user_id,
            RagCollectionShare.collection_id.in_(set(collection_ids)),
        )
    )
    return {row[0]: row[1] for row in result.all()}


async def list_collections(
    session: AsyncSession, *, user_id: uuid.UUID | None, offset: int, limit: int
) -> Sequence[RagCollection]:
    """Collections visible to ``user_id`` (all of them when ``None``: the admin overview)."""
    query = select(RagCollection).order_by(RagCollection.created_at, RagCollection.id)
    if user_id is not None:
        query = query.where(access_clause(user_id, "read"))
    result = await session.execute(query.offset(offset).limit(limit))
    return result.scalars().all()


async def find_by_name(
    session: AsyncSession, user_id: uuid.UUID, name: str
) -> RagCollection | None:
    result = await session.execute(
        select(RagCollection).where(RagCollection.user_id == user_id, RagCollection.name == name)
    )
    return result.scalar_one_or_none()


async def document_counts(
    session: AsyncSession, collection_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, int]:
    if not collection_ids:
        return {}
    result = await session.execute(
        select(RagDocument.collection_id, func.count())
        .where(RagDocument.collection_id.in_(collection_ids))
        .group_by(RagDocument.collection_id)
    )
    return {row[0]: int(row[1]) for row in result.all()}


async def emails(session: AsyncSession, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    if not user_ids:
        return {}
    result = await session.execute(select(User.id, User.email).where(User.id.in_(set(user_ids))))
    return {row[0]: row[1] for row in result.all()}


async def user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(User.email == email.strip().lower()))
    return result.scalar_one_or_none()


async def list_shares(
    session: AsyncSession, collection_id: uuid.UUID
) -> Sequence[tuple[RagCollectionShare, str]]:
    result = await session.execute(
        select(RagCollectionShare, User.email)
        .join(User, User.id == RagCollectionShare.user_id)
        .where(RagCollectionShare.collection_id == collection_id)
        .order_by(User.email)
    )
    return [(row[0], row[1]) for row in result.all()]


async def upsert_share(
    session: AsyncSession, collection_id: uuid.UUID, user_id: uuid.UUID, permission: str
) -> RagCollectionShare:
    share = await session.get(RagCollectionShare, (collection_id, user_id))
    if share is None:
        share = RagCollectionShare(
            collection_id=collection_id, user_id=user_id, permission=permission
        )
        session.add(share)
    else:
        share.permission = permission
    await session.flush()
    return share


async def delete_share(session: AsyncSession, collection_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    result = await session.execute(
        delete(RagCollectionShare).where(
            RagCollectionShare.collection_id == collection_id,
            RagCollectionShare.user_id == user_id,
        )
    )
    return bool(getattr(result, "rowcount", 0))


# --- documents ---------------------------------------------------------------------------


async def get_document(
    session: AsyncSession, document_id: uuid.UUID, *, user_id: uuid.UUID, need: Need
) -> tuple[RagDocument, RagCollection] | None:
    result = await session.execute(
        select(RagDocument, RagCollection)
        .join(RagCollection, RagCollection.id == RagDocument.collection_id)
        .where(RagDocument.id == document_id, access_clause(user_id, need))
    )
    row = result.first()
    return (row[0], row[1]) if row else None


async def list_documents(
    session: AsyncSession,
    collection_id: uuid.UUID,
    *,
    status: str | None,
    offset: int,
    limit: int,
) -> Sequence[RagDocument]:
    query = select(RagDocument).where(RagDocument.collection_id == collection_id)
    if status:
        query = query.where(RagDocument.status == status)
    result = await session.execute(
        query.order_by(RagDocument.created_at, RagDocument.id).offset(offset).limit(limit)
    )
    return result.scalars().all()


async def find_by_hash(
    session: AsyncSession, collection_id: uuid.UUID, content_hash: str
) -> RagDocument | None:
    result = await session.execute(
        select(RagDocument).where(
            RagDocument.collection_id == collection_id, RagDocument.content_hash == content_hash
        )
    )
    return result.scalar_one_or_none()


async def searchable_documents(
    session: AsyncSession, collection_id: uuid.UUID, document_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, RagDocument]:
    """The processed documents among ``document_ids`` that still belong to the collection."""
    if not document_ids:
        return {}
    result = await session.execute(
        select(RagDocument).where(
            RagDocument.collection_id == collection_id,
            RagDocument.id.in_(set(document_ids)),
            RagDocument.status == "processed",
        )
    )
    return {doc.id: doc for doc in result.scalars().all()}


async def unfinished_document_ids(session: AsyncSession) -> list[uuid.UUID]:
    result = await session.execute(
        select(RagDocument.id)
        .where(RagDocument.status.in_(UNFINISHED))
        .order_by(RagDocument.created_at)
    )
    return list(result.scalars().all())


async def claim_document(session: AsyncSession, document_id: uuid.UUID, now: datetime) -> bool:
    """Mark an unfinished document as processing and count the attempt; False if finished/gone."""
    result = await session.execute(
        update(RagDocument)
        .where(RagDocument.id == document_id, RagDocument.status.in_(UNFINISHED))
        .values(
            status="processing",
            progress=0.0,
            attempts=RagDocument.attempts + 1,
            error=None,
            updated_at=now,
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def set_progress(
    session: AsyncSession, document_id: uuid.UUID, progress: float, now: datetime
) -> bool:
    result = await session.execute(
        update(RagDocument)
        .where(and_(RagDocument.id == document_id, RagDocument.status == "processing"))
        .values(progress=progress, updated_at=now)
    )
    return bool(getattr(result, "rowcount", 0))
