from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import String
from sqlalchemy.orm import Mapped, mapped_column

from enclava.kit.time import utcnow
from enclava.models.base import Base
from enclava.models.encrypted import EncryptedString


class AppSecret(Base):
    """A runtime secret set by an administrator (e.g. a provider API key entered in the
    dashboard). The value is encrypted at rest and never returned by the API."""

    __tablename__ = "app_secrets"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(EncryptedString())
    updated_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
