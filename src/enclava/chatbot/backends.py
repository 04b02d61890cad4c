"""What a chatbot needs from the rest of Enclava, as two small protocols.

``ChatBackend`` sends an OpenAI-shaped chat request for a subject through the metered gateway
(policy, rate limits, budget reservation and settlement, usage rows); ``Retriever`` searches a RAG
collection for a subject. The orchestration in ``service.py`` depends only on these, so it can be
tested with doubles and wired to the real gateway and RAG service in one place.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Protocol

from enclava.auth.subject import AuthSubject


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the gateway knows about a model; ``None`` fields are unknown."""

    id: str
    confidential: bool
    context_window: int | None = None
    max_output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatReply:
    """A finished (non-streamed) completion."""

    content: str
    model: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One piece of a streamed completion; the last chunk carries usage when the upstream sent it."""

    content: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class RetrievedChunk:
    text: str
    score: float
    document_id: uuid.UUID | str
    filename: str
    page: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


class ModelCatalog(Protocol):
    async def describe_model(self, model: str) -> ModelInfo | None:
        """The model's facts, or ``None`` when the gateway does not know the model."""
        ...


class ChatBackend(ModelCatalog, Protocol):
    async def complete(
        self,
        subject: AuthSubject,
        body: dict[str, Any],
        *,
        endpoint: str,
        confidential_only: bool,
    ) -> ChatReply:
        """One metered, non-streamed call; raises ``AppError`` (e.g. 429 insufficient_quota)."""
        ...

    async def stream(
        self,
        subject: AuthSubject,
        body: dict[str, Any],
        *,
        endpoint: str,
        confidential_only: bool,
    ) -> AsyncGenerator[ChatChunk, None]:
        """Start a metered streamed call.

        Every refusal (policy, rate limit, budget, upstream unreachable) is raised when this
        coroutine is awaited, before any chunk, so callers can still answer with an error status.
        Metering is settled when the iterator finishes or is closed early.
        """
        ...


class Retriever(Protocol):
    async def search(
        self,
        subject: AuthSubject,
        collection_id: uuid.UUID,
        query: str,
        *,
        top_k: int,
        mode: str = "hybrid",
    ) -> list[RetrievedChunk]:
        """The best ``top_k`` chunks for ``query``, best first; 404 if the subject cannot read it."""
        ...


@dataclass(frozen=True, slots=True)
class ChatbotBackends:
    chat: ChatBackend
    retriever: Retriever | None
