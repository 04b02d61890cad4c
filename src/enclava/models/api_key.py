from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from enclava.models.base import Base, IdMixin, JSONType, TimestampMixin


class ApiKey(IdMixin, TimestampMixin, Base):
    """An API key. Only an HMAC of the key is stored; ``key_prefix`` is shown to identify it."""

    __tablename__ = "api_keys"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    key_prefix: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[list[str]] = mapped_column(JSONType, default=list)
    tier: Mapped[str] = mapped_column(String(16), default="standard")
    # Empty list: every model the owner may use.
    allowed_models: Mapped[list[str]] = mapped_column(JSONType, default=list)
    confidential_only: Mapped[bool] = mapped_column(default=False)
    rate_limit_per_minute: Mapped[int | None]
    rate_limit_per_hour: Mapped[int | None]
    expires_at: Mapped[datetime | None]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
