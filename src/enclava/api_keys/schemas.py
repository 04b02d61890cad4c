from __future__ import annotations

import uuid
from datetime import datetime
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

Scope = Literal[
    "llm.chat",
    "llm.embeddings",
    "llm.models",
    "rag.read",
    "rag.write",
    "chatbot.use",
    "workflow.run",
]


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    # Omitted or empty: llm.chat, llm.embeddings and llm.models.
    scopes: list[Scope] | None = Field(default=None, max_length=32)
    tier: Literal["standard", "premium"] = "standard"
    # Empty: every model the owner may use.
    allowed_models: list[str] = Field(default_factory=list, max_length=200)
    confidential_only: bool = False
    expires_at: AwareDatetime | None = None
    # Administrators only.
    user_id: uuid.UUID | None = None
    rate_limit_per_minute: int | None = Field(default=None, ge=1, le=10_000_000)
    rate_limit_per_hour: int | None = Field(default=None, ge=1, le=100_000_000)


class ApiKeyRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    key_prefix: str
    scopes: list[str]
    tier: str
    allowed_models: list[str]
    confidential_only: bool
    rate_limit_per_minute: int | None
    rate_limit_per_hour: int | None
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime


class ApiKeyCreated(ApiKeyRead):
    """Returned by create and rotate only: ``key`` is never shown again."""

    key: str
