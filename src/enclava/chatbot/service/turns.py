"""One conversational turn: memory, sources, one metered model call, the turn recorded.

A turn (``run_turn`` / ``stream_turn``) never holds a database transaction while the model is
working: it reads the chatbot and the memory in one short transaction, retrieves sources, asks
the ``ChatBackend`` (the metered gateway: policy, rate limits, budget, usage rows), and records the
user message and the answer in a second short transaction. A failed call records nothing, so
the memory never holds a question without its answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from enclava.auth.subject import AuthSubject
from enclava.chatbot import repository
from enclava.chatbot.backends import ChatbotBackends, ChunkStream, RetrievedChunk
from enclava.chatbot.prompting import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_NO_SOURCES_REPLY,
    ContextLimits,
    HistoryMessage,
    assemble_prompt,
    estimate_tokens,
    source_refs,
)
from enclava.chatbot.service.chatbots import (
    conversation_not_found,
    effective_system_prompt,
    get_chatbot,
)
from enclava.db import SessionFactory, transaction
from enclava.errors import BadRequestError, NotFoundError
from enclava.kit.time import utcnow
from enclava.models import ChatbotConversation, ChatbotInstance, ChatbotMessage

logger = logging.getLogger(__name__)

TITLE_CHARS = 80


@dataclass(frozen=True, slots=True)
class TurnResult:
    response: str
    conversation_id: uuid.UUID
    # ``None`` if the chatbot or conversation was deleted while the model was answering.
    message_id: uuid.UUID | None
    model: str
    sources: list[dict[str, Any]]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = "stop"
    # True when "answer only from sources" found nothing and the fixed reply was given.
    refused: bool = False


class StreamingTurn:
    """A started streamed turn: ``events`` yields text deltas, then the final ``TurnResult``.

    Whoever serves it must call ``aclose`` when done (also when ``events`` was never started),
    so the metered call is settled however the response ends.
    """

    def __init__(
        self,
        *,
        conversation_id: uuid.UUID,
        model: str,
        sources: list[dict[str, Any]],
        refused: bool,
        events: AsyncGenerator[str | TurnResult, None],
        upstream: ChunkStream | None,
    ) -> None:
        self.conversation_id = conversation_id
        self.model = model
        self.sources = sources
        self.refused = refused
        self.events = events
        self._upstream = upstream

    async def aclose(self) -> None:
        await self.events.aclose()
        if self._upstream is not None:
            await self._upstream.aclose()


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """The ``chatbot.message_received`` event: a user message and the answer, recorded."""

    chatbot_id: uuid.UUID
    conversation_id: uuid.UUID
    message_id: uuid.UUID
    user_id: uuid.UUID
    api_key_id: uuid.UUID | None
    message: str
    response: str


@dataclass(slots=True)
class _Turn:
    """Everything a turn needs, read before the model is called."""

    chatbot_id: uuid.UUID
    owner_id: uuid.UUID
    api_key_id: uuid.UUID | None
    model: str
    confidential_only: bool
    conversation_id: uuid.UUID
    is_new_conversation: bool
    user_message: str
    received_at: Any
    # Earlier messages a stateless OpenAI client sent; stored when a conversation starts.
    seed_history: list[HistoryMessage] = field(default_factory=list)
    sources: list[RetrievedChunk] = field(default_factory=list)
    # The upstream request; ``None`` when the fixed no-sources reply is given instead.
    body: dict[str, Any] | None = None
    refusal: str | None = None

    @property
    def source_refs(self) -> list[dict[str, Any]]:
        return source_refs(self.sources)


def split_openai_messages(messages: Sequence[Any]) -> tuple[list[HistoryMessage], str]:
    """Split an OpenAI ``messages`` list into (earlier turns, the new user message).

    System and developer messages are dropped: the chatbot's own prompt governs. The last
    message must come from the user; text content parts are joined.
    """
    turns: list[HistoryMessage] = []
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            continue
        if role not in ("user", "assistant"):
            raise BadRequestError(
                f"messages[{index}]: only system, user and assistant messages are supported",
                param=f"messages.{index}.role",
            )
        turns.append(HistoryMessage(role, _text_content(message.get("content"), index)))
    if not turns or turns[-1].role != "user":
        raise BadRequestError("The last message must be a user message", param="messages")
    if not turns[-1].content.strip():
        raise BadRequestError("The user message is empty", param="messages")
    return turns[:-1], turns[-1].content


def _text_content(content: Any, index: int) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise BadRequestError(
                    f"messages[{index}]: only text content is supported",
                    param=f"messages.{index}.content",
                )
            texts.append(str(part.get("text", "")))
        return "".join(texts)
    if content is None:
        return ""
    raise BadRequestError(
        f"messages[{index}]: content must be a string or a list of text parts",
        param=f"messages.{index}.content",
    )


async def _prepare_turn(
    factory: SessionFactory,
    subject: AuthSubject,
    backends: ChatbotBackends,
    *,
    chatbot_id: uuid.UUID,
    message: str,
    conversation_id: uuid.UUID | None,
    seed_history: Sequence[HistoryMessage],
) -> _Turn:
    received_at = utcnow()
    async with transaction(factory) as session:
        chatbot = await get_chatbot(session, subject, chatbot_id)
        if not chatbot.is_active:
            raise BadRequestError("This chatbot is disabled", code="chatbot_inactive")
        system_prompt = await effective_system_prompt(session, chatbot)
        seed: list[HistoryMessage] = []
        if conversation_id is not None:
            conversation = await repository.get_conversation(
                session, conversation_id, chatbot_id=chatbot.id, owner_id=subject.user_id
            )
            if conversation is None:
                raise conversation_not_found()
            rows = await repository.recent_messages(
                session, conversation.id, limit=chatbot.memory_messages
            )
            history = [HistoryMessage(r.role, r.content, r.token_count) for r in rows]
        else:
            history = seed = list(seed_history)
    turn = _Turn(
        chatbot_id=chatbot.id,
        owner_id=chatbot.user_id,
        api_key_id=subject.api_key.id if subject.api_key else None,
        model=chatbot.model,
        confidential_only=chatbot.confidential_only or subject.confidential_only,
        conversation_id=conversation_id or uuid.uuid4(),
        is_new_conversation=conversation_id is None,
        user_message=message,
        received_at=received_at,
        seed_history=seed,
    )
    refusal = chatbot.no_sources_reply or DEFAULT_NO_SOURCES_REPLY
    retrieved = await _retrieve(subject, backends, chatbot, message)
    if chatbot.answer_only_from_sources and not retrieved:
        turn.refusal = refusal
        return turn

    info = await backends.chat.describe_model(chatbot.model)
    max_output = chatbot.max_tokens
    if info is not None and info.max_output_tokens:
        max_output = min(max_output, info.max_output_tokens)
    plan = assemble_prompt(
        system_prompt=system_prompt,
        user_message=message,
        history=history,
        sources=retrieved,
        answer_only_from_sources=chatbot.answer_only_from_sources,
        limits=ContextLimits(
            context_window=(info.context_window if info and info.context_window else None)
            or DEFAULT_CONTEXT_WINDOW,
            max_output_tokens=max_output,
            memory_messages=chatbot.memory_messages,
            memory_tokens=chatbot.memory_tokens,
        ),
    )
    turn.sources = plan.sources
    if chatbot.answer_only_from_sources and not plan.sources:
        turn.refusal = refusal
        return turn
    turn.body = {
        "model": chatbot.model,
        "messages": plan.messages,
        "temperature": chatbot.temperature,
        "max_tokens": plan.max_output_tokens,
    }
    return turn


async def _retrieve(
    subject: AuthSubject, backends: ChatbotBackends, chatbot: ChatbotInstance, query: str
) -> list[RetrievedChunk]:
    if chatbot.rag_collection_id is None:
        return []
    if backends.retriever is None:
        raise BadRequestError(
            "This chatbot uses a RAG collection, but RAG is not available",
            code="rag_unavailable",
        )
    # Search as the chatbot's owner: a key needs only chatbot.use, not rag.read, to be answered
    # from the owner's collection through the chatbot.
    owner = AuthSubject(kind="user", user=subject.user)
    try:
        chunks = await backends.retriever.search(
            owner, chatbot.rag_collection_id, query, top_k=chatbot.top_k, mode=chatbot.search_mode
        )
    except NotFoundError:
        # The collection was unshared from the owner: say so rather than answer without it.
        raise BadRequestError(
            "This chatbot's RAG collection is no longer available to its owner",
            code="rag_collection_unavailable",
        ) from None
    threshold = chatbot.score_threshold
    return [c for c in chunks if threshold is None or c.score >= threshold]


async def _finish(
    factory: SessionFactory,
    turn: _Turn,
    *,
    answer: str,
    model: str | None = None,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    finish_reason: str | None = "stop",
) -> TurnResult:
    refs = turn.source_refs
    message_id = await _record_turn(
        factory, turn, answer=answer, completion_tokens=completion_tokens, refs=refs
    )
    if message_id is not None:
        await emit_message_received(
            MessageReceived(
                chatbot_id=turn.chatbot_id,
                conversation_id=turn.conversation_id,
                message_id=message_id,
                user_id=turn.owner_id,
                api_key_id=turn.api_key_id,
                message=turn.user_message,
                response=answer,
            )
        )
    return TurnResult(
        response=answer,
        conversation_id=turn.conversation_id,
        message_id=message_id,
        model=model or turn.model,
        sources=refs,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason,
        refused=turn.body is None,
    )


async def _record_turn(
    factory: SessionFactory,
    turn: _Turn,
    *,
    answer: str,
    completion_tokens: int,
    refs: list[dict[str, Any]],
) -> uuid.UUID | None:
    """Store the question and its answer (and a stateless client's earlier turns)."""
    async with transaction(factory) as session:
        if await repository.get_chatbot(session, turn.chatbot_id, owner_id=turn.owner_id) is None:
            return None
        if turn.is_new_conversation:
            session.add(
                ChatbotConversation(
                    id=turn.conversation_id,
                    chatbot_id=turn.chatbot_id,
                    user_id=turn.owner_id,
                    api_key_id=turn.api_key_id,
                    title=" ".join(turn.user_message.split())[:TITLE_CHARS],
                )
            )
            await session.flush()
            position = 0
        else:
            conversation = await repository.get_conversation(
                session, turn.conversation_id, chatbot_id=turn.chatbot_id, owner_id=turn.owner_id
            )
            if conversation is None:
                return None
            conversation.updated_at = utcnow()
            position = await repository.next_position(session, conversation.id)
        rows = [
            ChatbotMessage(
                conversation_id=turn.conversation_id,
                position=position + offset,
                role=m.role,
                content=m.content,
                token_count=estimate_tokens(m.content),
                created_at=turn.received_at,
            )
            for offset, m in enumerate(turn.seed_history)
        ]
        position += len(rows)
        rows.append(
            ChatbotMessage(
                conversation_id=turn.conversation_id,
                position=position,
                role="user",
                content=turn.user_message,
                token_count=estimate_tokens(turn.user_message),
                created_at=turn.received_at,
            )
        )
        answer_row = ChatbotMessage(
            conversation_id=turn.conversation_id,
            position=position + 1,
            role="assistant",
            content=answer,
            token_count=completion_tokens or estimate_tokens(answer),
            sources=refs,
        )
        rows.append(answer_row)
        repository.add_all(session, rows)
        await session.flush()
        return answer_row.id


async def emit_message_received(event: MessageReceived) -> None:
    """The hook point for the ``chatbot.message_received`` webhook event.

    Enclava has no event bus yet; when webhooks land, publish ``event`` from here (it is called
    once per recorded turn, after the commit). Until then only identifiers are logged.
    """
    logger.info(
        "chatbot.message_received",
        extra={
            "chatbot_id": str(event.chatbot_id),
            "conversation_id": str(event.conversation_id),
            "message_id": str(event.message_id),
        },
    )


async def run_turn(
    factory: SessionFactory,
    subject: AuthSubject,
    backends: ChatbotBackends,
    *,
    chatbot_id: uuid.UUID,
    message: str,
    conversation_id: uuid.UUID | None = None,
    seed_history: Sequence[HistoryMessage] = (),
    endpoint: str,
) -> TurnResult:
    """Answer one message: memory, sources, one metered model call, and the turn recorded.

    ``subject`` is who pays (the API key or the signed-in user); it must own the chatbot.
    """
    turn = await _prepare_turn(
        factory,
        subject,
        backends,
        chatbot_id=chatbot_id,
        message=message,
        conversation_id=conversation_id,
        seed_history=seed_history,
    )
    if turn.body is None:
        return await _finish(factory, turn, answer=turn.refusal or "")
    reply = await backends.chat.complete(
        subject, turn.body, endpoint=endpoint, confidential_only=turn.confidential_only
    )
    return await _finish(
        factory,
        turn,
        answer=reply.content,
        model=reply.model,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        finish_reason=reply.finish_reason,
    )


async def stream_turn(
    factory: SessionFactory,
    subject: AuthSubject,
    backends: ChatbotBackends,
    *,
    chatbot_id: uuid.UUID,
    message: str,
    conversation_id: uuid.UUID | None = None,
    seed_history: Sequence[HistoryMessage] = (),
    endpoint: str,
) -> StreamingTurn:
    """Start a streamed turn. Every refusal is raised here, before the first event.

    The turn is recorded once the stream has finished; a stream the client abandons records
    nothing (its usage is still metered by the gateway).
    """
    turn = await _prepare_turn(
        factory,
        subject,
        backends,
        chatbot_id=chatbot_id,
        message=message,
        conversation_id=conversation_id,
        seed_history=seed_history,
    )
    chunks = None
    if turn.body is not None:
        chunks = await backends.chat.stream(
            subject, turn.body, endpoint=endpoint, confidential_only=turn.confidential_only
        )
    return StreamingTurn(
        conversation_id=turn.conversation_id,
        model=turn.model,
        sources=turn.source_refs,
        refused=turn.body is None,
        events=_stream_events(factory, turn, chunks),
        upstream=chunks,
    )


async def _stream_events(
    factory: SessionFactory, turn: _Turn, chunks: ChunkStream | None
) -> AsyncGenerator[str | TurnResult, None]:
    if chunks is None:
        answer = turn.refusal or ""
        yield answer
        yield await _finish(factory, turn, answer=answer)
        return
    parts: list[str] = []
    prompt_tokens = completion_tokens = 0
    finish_reason: str | None = None
    async with aclosing(chunks):
        async for chunk in chunks:
            if chunk.content:
                parts.append(chunk.content)
                yield chunk.content
            finish_reason = chunk.finish_reason or finish_reason
            prompt_tokens = chunk.prompt_tokens or prompt_tokens
            completion_tokens = chunk.completion_tokens or completion_tokens
    yield await _finish(
        factory,
        turn,
        answer="".join(parts),
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        finish_reason=finish_reason or "stop",
    )
