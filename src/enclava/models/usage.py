from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from enclava.kit.time import utcnow
from enclava.models.base import Base, IdMixin


class UsageRecord(IdMixin, Base):
    """One row per LLM call, written in the same transaction as the budget settlement."""

    __tablename__ = "usage_tracking"
    __table_args__ = (
        Index("ix_usage_tracking_user_created", "user_id", "created_at"),
        Index("ix_usage_tracking_key_created", "api_key_id", "created_at"),
    )

    # No foreign keys: usage is a ledger and outlives the users and keys it names.
    user_id: Mapped[uuid.UUID | None]
    api_key_id: Mapped[uuid.UUID | None]
    request_id: Mapped[str | None] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(200), index=True)
    provider: Mapped[str] = mapped_column(String(100), index=True)
    prompt_tokens: Mapped[int] = mapped_column(default=0)
    completion_tokens: Mapped[int] = mapped_column(default=0)
    total_tokens: Mapped[int] = mapped_column(default=0)
    cost_nanousd: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int] = mapped_column(default=0)
    status: Mapped[str] = mapped_column(String(16))
    error_code: Mapped[str | None] = mapped_column(String(64))
    streamed: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
