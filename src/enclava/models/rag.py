from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from enclava.models.base import Base, IdMixin, JSONType, TimestampMixin


class RagCollection(IdMixin, TimestampMixin, Base):
    __tablename__ = "rag_collections"
    __table_args__ = (UniqueConstraint("user_id", "name"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    qdrant_collection_name: Mapped[str] = mapped_column(String(200))
    embedding_model: Mapped[str] = mapped_column(String(200), default="multilingual-e5-small")
    chunk_size: Mapped[int] = mapped_column(default=800)
    chunk_overlap: Mapped[int] = mapped_column(default=100)


class RagCollectionShare(Base):
    """Access to a collection granted by an admin to another user."""

    __tablename__ = "rag_collection_shares"

    collection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rag_collections.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    permission: Mapped[str] = mapped_column(String(8), default="read")


class RagDocument(IdMixin, TimestampMixin, Base):
    __tablename__ = "rag_documents"
    __table_args__ = (UniqueConstraint("collection_id", "content_hash"),)

    collection_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("rag_collections.id", ondelete="CASCADE"), index=True
    )
    user_id: Mapped[uuid.UUID] = mapped_column(index=True)
    # The client's name, cleaned, for display and citations only; never used as a path.
    filename: Mapped[str] = mapped_column(String(255))
    stored_path: Mapped[str] = mapped_column(String(500))
    content_type: Mapped[str | None] = mapped_column(String(200))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    content_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    error: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(default=0.0)
    # Processing runs started; a document that keeps interrupting its worker is given up on.
    attempts: Mapped[int] = mapped_column(default=0)
    chunk_count: Mapped[int | None]
    page_count: Mapped[int | None]
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    processed_at: Mapped[datetime | None]
