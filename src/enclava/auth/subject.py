"""The one typed identity every request carries after authentication."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from enclava.models import ApiKey, User

# Every scope a key can hold. A user (JWT) holds all of them within their own resources.
ALL_SCOPES = frozenset(
    {
        "llm.chat",
        "llm.embeddings",
        "llm.models",
        "rag.read",
        "rag.write",
        "chatbot.use",
        "workflow.run",
    }
)
DEFAULT_KEY_SCOPES = ("llm.chat", "llm.embeddings", "llm.models")


@dataclass(frozen=True, slots=True)
class AuthSubject:
    kind: Literal["user", "api_key"]
    user: User
    api_key: ApiKey | None = None

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin

    @property
    def scopes(self) -> frozenset[str]:
        if self.api_key is not None:
            return frozenset(self.api_key.scopes)
        return ALL_SCOPES

    def has_scopes(self, *scopes: str) -> bool:
        return set(scopes) <= self.scopes

    @property
    def confidential_only(self) -> bool:
        return bool(self.api_key and self.api_key.confidential_only)

    def may_use_model(self, model_id: str) -> bool:
        if self.api_key is None or not self.api_key.allowed_models:
            return True
        return model_id in self.api_key.allowed_models
