"""The one typed identity every request carries after authentication."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

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


def user_scopes(user: User) -> frozenset[str]:
    """The scopes ``user`` holds, and so the most any of their keys can hold.

    Both roles hold every scope over their own resources today; the admin role adds management
    rights on the internal API, which no key can carry. Keys are checked against this at
    creation and again on every request, so narrowing a user's rights narrows their keys.
    """
    return ALL_SCOPES if user.is_active else frozenset()


@dataclass(slots=True)
class PendingChecks:
    """Checks of an API-key request left to the gateway's admission, which runs them on Redis
    in the same round trip as the budget reservation (``enclava.llm.admission``).

    The request is not counted against the key's rate limits yet. ``key``: the key and its
    owner come from this instance's copy of their shared cache entry, which admission confirms
    is still the entry on Redis (``api_keys.lookup``); ``None`` when they were read from Redis.
    ``request_state``: the request's ``state``, where the counted window's usage goes for the
    ``X-RateLimit-*`` headers. ``done`` once admission (or ``admission.complete`` on an error
    path) has run them: a request is counted exactly once.
    """

    key: UnconfirmedKey | None = None
    request_state: Any = None
    done: bool = False


@dataclass(frozen=True, slots=True)
class UnconfirmedKey:
    """A key's shared cache entry as this instance last read it: its name on Redis, its exact
    bytes, and the key's hash (the entry's identity in this instance's copy)."""

    name: str
    raw: bytes
    key_hash: str


@dataclass(frozen=True, slots=True)
class AuthSubject:
    """Who is calling: a signed-in user (``kind="user"``) or an API key and its owner.

    ``user`` and ``api_key`` are detached snapshots loaded for this request: read them freely,
    but load the row in your own session before changing it.
    """

    kind: Literal["user", "api_key"]
    user: User
    api_key: ApiKey | None = None
    # The sign-in session (refresh-token family) of a JWT subject, when the token carries one.
    session_id: uuid.UUID | None = None
    # Checks still to run before this subject may spend anything (see PendingChecks).
    pending: PendingChecks | None = field(default=None, compare=False)

    @property
    def user_id(self) -> uuid.UUID:
        return self.user.id

    @property
    def is_admin(self) -> bool:
        return self.user.is_admin

    @property
    def sees_everything(self) -> bool:
        """Admins signed in to the internal API see every user's resources; keys never do."""
        return self.kind == "user" and self.user.is_admin

    @property
    def scopes(self) -> frozenset[str]:
        if self.api_key is not None:
            return frozenset(self.api_key.scopes) & user_scopes(self.user)
        return user_scopes(self.user)

    def has_scopes(self, *scopes: str) -> bool:
        return set(scopes) <= self.scopes

    @property
    def confidential_only(self) -> bool:
        return bool(self.api_key and self.api_key.confidential_only)

    def may_use_model(self, model_id: str) -> bool:
        if self.api_key is None or not self.api_key.allowed_models:
            return True
        return model_id in self.api_key.allowed_models
