"""What a chatbot needs from the rest of Enclava, as two small protocols.

``ChatBackend`` sends an OpenAI-shaped chat request for a subject through the metered gateway
(policy, rate limits, budget reservation and settlement, usage rows); ``Retriever`` searches a RAG
collection for a subject. The orchestration in ``service.py`` depends only on these, so it can be
tested with doubles and wired to the real gateway and RAG service in one place.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from enclava.auth.subject import AuthSubject
from enclava.db import transaction
from enclava.llm import gateway
from enclava.llm.gateway import ChatResult, ChatStream
from enclava.llm.registry import get_runtime
from enclava.rag import service as rag_service
from enclava.rag.runtime import get_runtime as get_rag_runtime
from enclava.rag.schemas import SearchMode
from enclava.state import AppState


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


class ChunkStream(Protocol):
    """A started streamed completion; ``aclose`` settles it even if it was never iterated."""

    def __aiter__(self) -> ChunkStream: ...

    async def __anext__(self) -> ChatChunk: ...

    async def aclose(self) -> None: ...


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
    ) -> ChunkStream:
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


# --- the real wiring ------------------------------------------------------------------------


class GatewayChatBackend:
    """``ChatBackend`` on the metered gateway (``enclava.llm.gateway.chat_completion``).

    The chatbot endpoints check their own scope (``chatbot.use``), so the gateway is called
    with ``scope=None``; the key's model allow-list, its confidential-only flag, rate limits and
    budgets still apply there.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def describe_model(self, model: str) -> ModelInfo | None:
        entry = get_runtime(self.state).models.get(model)
        if entry is None or entry.kind != "chat":
            return None
        return ModelInfo(
            id=entry.id,
            confidential=entry.confidential,
            context_window=entry.context_window,
            max_output_tokens=entry.max_output_tokens,
        )

    async def complete(
        self,
        subject: AuthSubject,
        body: dict[str, Any],
        *,
        endpoint: str,
        confidential_only: bool,
    ) -> ChatReply:
        result = await gateway.chat_completion(
            self.state,
            subject,
            {**body, "stream": False},
            endpoint=endpoint,
            scope=None,
            confidential_only=confidential_only,
        )
        assert isinstance(result, ChatResult)
        choices = result.body.get("choices") or [{}]
        message = choices[0].get("message") or {}
        return ChatReply(
            content=str(message.get("content") or ""),
            model=result.model,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=choices[0].get("finish_reason"),
        )

    async def stream(
        self,
        subject: AuthSubject,
        body: dict[str, Any],
        *,
        endpoint: str,
        confidential_only: bool,
    ) -> ChunkStream:
        result = await gateway.chat_completion(
            self.state,
            subject,
            {**body, "stream": True, "stream_options": {"include_usage": True}},
            endpoint=endpoint,
            scope=None,
            confidential_only=confidential_only,
        )
        assert isinstance(result, ChatStream)
        return _GatewayChunks(result)


class _GatewayChunks:
    """OpenAI chunks from a ``ChatStream`` as ``ChatChunk``s; the last one carries the usage
    the gateway settled (the upstream's, or its estimate when the upstream sent none)."""

    def __init__(self, stream: ChatStream) -> None:
        self._stream = stream
        self._pending: list[ChatChunk] = []
        self._done = False

    def __aiter__(self) -> _GatewayChunks:
        return self

    async def __anext__(self) -> ChatChunk:
        while not self._pending:
            if self._done:
                raise StopAsyncIteration
            try:
                chunk = await self._stream.__anext__()
            except StopAsyncIteration:
                self._done = True
                return ChatChunk(
                    prompt_tokens=self._stream.prompt_tokens,
                    completion_tokens=self._stream.completion_tokens,
                )
            for choice in chunk.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta") or {}
                content = delta.get("content") if isinstance(delta, dict) else None
                if content or choice.get("finish_reason"):
                    self._pending.append(
                        ChatChunk(
                            content=str(content or ""), finish_reason=choice.get("finish_reason")
                        )
                    )
        return self._pending.pop(0)

    async def aclose(self) -> None:
        self._done = True
        await self._stream.aclose()


class RagRetriever:
    """``Retriever`` on RAG's search (its access rule included), in a short transaction."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def search(
        self,
        subject: AuthSubject,
        collection_id: uuid.UUID,
        query: str,
        *,
        top_k: int,
        mode: str = "hybrid",
    ) -> list[RetrievedChunk]:
        async with transaction(self.state.session_factory) as session:
            hits = await rag_service.search(
                session,
                subject,
                collection_id,
                query,
                rag=get_rag_runtime(self.state),
                top_k=top_k,
                mode=cast(SearchMode, mode),
            )
        return [
            RetrievedChunk(
                text=hit.text,
                score=hit.score,
                document_id=hit.document_id,
                filename=hit.filename,
                page=hit.page,
                metadata=hit.metadata,
            )
            for hit in hits
        ]
