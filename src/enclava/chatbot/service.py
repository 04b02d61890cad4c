"""Chatbots: configuration, prompt templates, conversations, and one conversational turn.

A turn (``run_turn`` / ``stream_turn``) never holds a database transaction while the model is
working: it reads the chatbot and the memory in one short transaction, retrieves sources, asks
the ``ChatBackend`` (the metered gateway: policy, rate limits, budget, usage rows), and records the
user message and the answer in a second short transaction. A failed call records nothing, so
the memory never holds a question without its answer.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit import service as audit
from enclava.auth.subject import AuthSubject
from enclava.chatbot import repository
from enclava.chatbot.backends import ChatbotBackends, ChatChunk, ModelCatalog, RetrievedChunk
from enclava.chatbot.prompting import (
    DEFAULT_CONTEXT_WINDOW,
    DEFAULT_NO_SOURCES_REPLY,
    ContextLimits,
    HistoryMessage,
    assemble_prompt,
    estimate_tokens,
    source_refs,
)
from enclava.chatbot.schemas import (
    ChatbotCreate,
    ChatbotUpdate,
    PromptTemplateCreate,
    PromptTemplateUpdate,
    TemplateVariable,
)
from enclava.chatbot.templates import (
    BUILTIN_TEMPLATES,
    Variable,
    check_values,
    declare_variables,
    placeholders,
    render,
    variables_from_rows,
)
from enclava.db import SessionFactory, transaction
from enclava.errors import (
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from enclava.kit.time import utcnow
from enclava.models import ChatbotConversation, ChatbotInstance, ChatbotMessage, PromptTemplate

logger = logging.getLogger(__name__)

TITLE_CHARS = 80


def _chatbot_not_found() -> NotFoundError:
    return NotFoundError("Chatbot not found", code="chatbot_not_found")


def _conversation_not_found() -> NotFoundError:
    return NotFoundError("Conversation not found", code="conversation_not_found")


# --- prompt templates -----------------------------------------------------------------------


async def ensure_builtin_templates(session: AsyncSession) -> None:
    """Insert the built-in templates that are missing (admins' edits to existing ones stay)."""
    existing = await repository.builtin_keys(session)
    for builtin in BUILTIN_TEMPLATES:
        if builtin.key in existing:
            continue
        try:
            async with session.begin_nested():
                session.add(
                    PromptTemplate(
                        builtin_key=builtin.key,
                        name=builtin.name,
                        description=builtin.description,
                        template=builtin.template,
                        variables=[v.as_dict() for v in builtin.variables],
                    )
                )
                await session.flush()
        except IntegrityError:
            # Another request seeded it at the same moment; its row is as good as ours.
            logger.debug("built-in template seeded concurrently", extra={"key": builtin.key})


async def list_templates(session: AsyncSession, subject: AuthSubject) -> list[PromptTemplate]:
    await ensure_builtin_templates(session)
    return await repository.list_visible_templates(session, user_id=subject.user_id)


async def get_template(
    session: AsyncSession, subject: AuthSubject, template_id: uuid.UUID
) -> PromptTemplate:
    template = await repository.get_visible_template(session, template_id, user_id=subject.user_id)
    if template is None:
        raise NotFoundError("Prompt template not found", code="template_not_found")
    return template


def _declared(text: str, variables: Sequence[TemplateVariable]) -> list[dict[str, Any]]:
    declared = [Variable(v.name, v.description, v.default) for v in variables]
    return [v.as_dict() for v in declare_variables(text, declared)]


async def create_template(
    session: AsyncSession,
    subject: AuthSubject,
    data: PromptTemplateCreate,
    *,
    request: Request | None = None,
) -> PromptTemplate:
    template = PromptTemplate(
        user_id=subject.user_id,
        name=data.name,
        description=data.description,
        template=data.template,
        variables=_declared(data.template, data.variables),
    )
    session.add(template)
    await session.flush()
    audit.record(
        session,
        action="prompt_template.create",
        subject=subject,
        resource_type="prompt_template",
        resource_id=template.id,
        request=request,
    )
    return template


def _check_may_edit(subject: AuthSubject, template: PromptTemplate) -> None:
    if template.user_id is None and not subject.is_admin:
        raise PermissionDeniedError(
            "Built-in templates can only be edited by administrators; create your own instead",
            code="builtin_template",
        )


async def update_template(
    session: AsyncSession,
    subject: AuthSubject,
    template_id: uuid.UUID,
    data: PromptTemplateUpdate,
    *,
    request: Request | None = None,
) -> PromptTemplate:
    template = await get_template(session, subject, template_id)
    _check_may_edit(subject, template)
    changes = data.model_fields_set
    text = data.template if data.template is not None else template.template
    if data.variables is not None:
        variables = _declared(text, data.variables)
    else:
        # Keep what is known about variables that are still used; new placeholders get declared.
        used = set(placeholders(text))
        kept = [TemplateVariable(**row) for row in template.variables if row["name"] in used]
        variables = _declared(text, kept)
    # Chatbots render this template at every turn: refuse an edit that would break one of them.
    parsed = variables_from_rows(variables)
    for chatbot in await repository.chatbots_using_template(session, template.id):
        try:
            check_values(parsed, chatbot.template_variables)
        except BadRequestError as exc:
            raise ConflictError(
                f"This change would break chatbots that use the template ({exc.message})",
                code="template_in_use",
            ) from exc
    template.template = text
    template.variables = variables
    if "name" in changes and data.name is not None:
        template.name = data.name
    if "description" in changes:
        template.description = data.description
    template.updated_at = utcnow()
    await session.flush()
    audit.record(
        session,
        action="prompt_template.update",
        subject=subject,
        resource_type="prompt_template",
        resource_id=template.id,
        details={"fields": sorted(changes)},
        request=request,
    )
    return template


async def delete_template(
    session: AsyncSession,
    subject: AuthSubject,
    template_id: uuid.UUID,
    *,
    request: Request | None = None,
) -> None:
    template = await get_template(session, subject, template_id)
    if template.user_id is None:
        raise PermissionDeniedError("Built-in templates cannot be deleted", code="builtin_template")
    in_use = await repository.count_chatbots_using_template(session, template.id)
    if in_use:
        raise ConflictError(
            f"The template is used by {in_use} chatbot(s); point them elsewhere first",
            code="template_in_use",
        )
    await session.delete(template)
    audit.record(
        session,
        action="prompt_template.delete",
        subject=subject,
        resource_type="prompt_template",
        resource_id=template_id,
        request=request,
    )


async def render_template(
    session: AsyncSession, subject: AuthSubject, template_id: uuid.UUID, values: dict[str, str]
) -> str:
    template = await get_template(session, subject, template_id)
    return render(template.template, variables_from_rows(template.variables), values)


# --- chatbots -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PromptChoice:
    system_prompt: str | None
    prompt_template_id: uuid.UUID | None
    template_variables: dict[str, str]


async def _resolve_prompt(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    chatbot_type: str,
    system_prompt: str | None,
    prompt_template_id: uuid.UUID | None,
    template_variables: dict[str, str],
) -> _PromptChoice:
    """Validate a chatbot's prompt: a literal system prompt, a template, or its type's built-in."""
    if system_prompt and prompt_template_id:
        raise BadRequestError(
            "Give either system_prompt or prompt_template_id, not both",
            code="conflicting_prompt",
            param="system_prompt",
        )
    if system_prompt:
        if template_variables:
            raise BadRequestError(
                "template_variables apply only to a prompt template",
                code="unknown_template_variables",
                param="template_variables",
            )
        return _PromptChoice(system_prompt, None, {})
    if prompt_template_id is not None:
        template = await repository.get_visible_template(
            session, prompt_template_id, user_id=subject.user_id
        )
        if template is None:
            raise NotFoundError(
                "Prompt template not found", code="template_not_found", param="prompt_template_id"
            )
    elif chatbot_type == "custom":
        raise BadRequestError(
            "A custom chatbot needs a system_prompt or a prompt_template_id",
            code="missing_prompt",
            param="system_prompt",
        )
    else:
        await ensure_builtin_templates(session)
        builtin = await repository.get_builtin_template(session, chatbot_type)
        assert builtin is not None, "built-in templates are seeded for every chatbot type"
        template = builtin
    check_values(variables_from_rows(template.variables), template_variables)
    return _PromptChoice(None, template.id, dict(template_variables))


async def _check_model(
    catalog: ModelCatalog | None, model: str, *, confidential_only: bool
) -> None:
    if catalog is None:
        return
    info = await catalog.describe_model(model)
    if info is None:
        raise BadRequestError(f"Unknown model {model!r}", code="model_not_found", param="model")
    if confidential_only and not info.confidential:
        raise BadRequestError(
            f"Model {model!r} is not served by a confidential provider, and this chatbot is "
            "restricted to confidential models",
            code="model_not_confidential",
            param="model",
        )


async def _check_collection(
    session: AsyncSession, subject: AuthSubject, collection_id: uuid.UUID | None
) -> None:
    if collection_id is not None and not await repository.collection_readable(
        session, collection_id, subject.user_id
    ):
        raise NotFoundError(
            "RAG collection not found", code="collection_not_found", param="rag_collection_id"
        )


async def create_chatbot(
    session: AsyncSession,
    subject: AuthSubject,
    data: ChatbotCreate,
    *,
    catalog: ModelCatalog | None,
    request: Request | None = None,
) -> ChatbotInstance:
    prompt = await _resolve_prompt(
        session,
        subject,
        chatbot_type=data.type,
        system_prompt=data.system_prompt,
        prompt_template_id=data.prompt_template_id,
        template_variables=data.template_variables,
    )
    await _check_model(catalog, data.model, confidential_only=data.confidential_only)
    await _check_collection(session, subject, data.rag_collection_id)
    settings = data.model_dump(
        exclude={"system_prompt", "prompt_template_id", "template_variables"}
    )
    chatbot = ChatbotInstance(
        user_id=subject.user_id,
        system_prompt=prompt.system_prompt,
        prompt_template_id=prompt.prompt_template_id,
        template_variables=prompt.template_variables,
        **settings,
    )
    session.add(chatbot)
    await session.flush()
    audit.record(
        session,
        action="chatbot.create",
        subject=subject,
        resource_type="chatbot",
        resource_id=chatbot.id,
        details={
            "type": chatbot.type,
            "model": chatbot.model,
            "rag": bool(chatbot.rag_collection_id),
        },
        request=request,
    )
    return chatbot


async def get_chatbot(
    session: AsyncSession, subject: AuthSubject, chatbot_id: uuid.UUID, *, for_admin: bool = False
) -> ChatbotInstance:
    """An own chatbot (``for_admin``: any chatbot when the subject is an administrator)."""
    owner_id = None if for_admin and subject.is_admin else subject.user_id
    chatbot = await repository.get_chatbot(session, chatbot_id, owner_id=owner_id)
    if chatbot is None:
        raise _chatbot_not_found()
    return chatbot


async def list_chatbots(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    all_users: bool = False,
    user_id: uuid.UUID | None = None,
    offset: int = 0,
    limit: int = 50,
) -> list[ChatbotInstance]:
    """Own chatbots; administrators may list everyone's or one user's."""
    if (all_users or user_id is not None) and not subject.is_admin:
        raise PermissionDeniedError(
            "Only administrators can list other users' chatbots", code="admin_required"
        )
    owner_id = user_id if user_id is not None else (None if all_users else subject.user_id)
    return await repository.list_chatbots(session, owner_id=owner_id, offset=offset, limit=limit)


async def update_chatbot(
    session: AsyncSession,
    subject: AuthSubject,
    chatbot_id: uuid.UUID,
    data: ChatbotUpdate,
    *,
    catalog: ModelCatalog | None,
    request: Request | None = None,
) -> ChatbotInstance:
    chatbot = await get_chatbot(session, subject, chatbot_id)
    changes = data.changes()
    prompt_fields = {"type", "system_prompt", "prompt_template_id", "template_variables"}
    if prompt_fields & changes.keys():
        new_type = changes.get("type", chatbot.type)
        if changes.get("system_prompt") or "prompt_template_id" in changes:
            # A new prompt source replaces the old one; variables belong to the old template.
            system_prompt = changes.get("system_prompt")
            template_id = changes.get("prompt_template_id")
            variables = changes.get("template_variables") or {}
        elif new_type != chatbot.type and await _uses_builtin_of(session, chatbot, chatbot.type):
            # Following the type's built-in template: switch to the new type's built-in.
            system_prompt, template_id = None, None
            variables = changes.get("template_variables") or {}
        else:
            system_prompt = changes.get("system_prompt", chatbot.system_prompt)
            template_id = None if "system_prompt" in changes else chatbot.prompt_template_id
            variables = changes.get("template_variables", chatbot.template_variables) or {}
        prompt = await _resolve_prompt(
            session,
            subject,
            chatbot_type=new_type,
            system_prompt=system_prompt,
            prompt_template_id=template_id,
            template_variables=variables,
        )
        changes.update(
            system_prompt=prompt.system_prompt,
            prompt_template_id=prompt.prompt_template_id,
            template_variables=prompt.template_variables,
        )
    if {"model", "confidential_only"} & changes.keys():
        await _check_model(
            catalog,
            changes.get("model", chatbot.model),
            confidential_only=changes.get("confidential_only", chatbot.confidential_only),
        )
    if changes.get("rag_collection_id") is not None:
        await _check_collection(session, subject, changes["rag_collection_id"])
    for name, value in changes.items():
        setattr(chatbot, name, value)
    chatbot.updated_at = utcnow()
    await session.flush()
    audit.record(
        session,
        action="chatbot.update",
        subject=subject,
        resource_type="chatbot",
        resource_id=chatbot.id,
        details={"fields": sorted(data.model_fields_set)},
        request=request,
    )
    return chatbot


async def _uses_builtin_of(session: AsyncSession, chatbot: ChatbotInstance, key: str) -> bool:
    if chatbot.prompt_template_id is None:
        return False
    builtin = await repository.get_builtin_template(session, key)
    return builtin is not None and builtin.id == chatbot.prompt_template_id


async def delete_chatbot(
    session: AsyncSession,
    subject: AuthSubject,
    chatbot_id: uuid.UUID,
    *,
    request: Request | None = None,
) -> None:
    chatbot = await get_chatbot(session, subject, chatbot_id)
    await session.delete(chatbot)
    audit.record(
        session,
        action="chatbot.delete",
        subject=subject,
        resource_type="chatbot",
        resource_id=chatbot_id,
        request=request,
    )


async def effective_system_prompt(session: AsyncSession, chatbot: ChatbotInstance) -> str | None:
    """The literal system prompt, or the chatbot's template rendered with its variables."""
    if chatbot.prompt_template_id is None:
        return chatbot.system_prompt
    template = await session.get(PromptTemplate, chatbot.prompt_template_id)
    if template is None:  # pragma: no cover - the foreign key forbids it
        return chatbot.system_prompt
    return render(
        template.template, variables_from_rows(template.variables), chatbot.template_variables
    )


# --- conversations --------------------------------------------------------------------------


async def list_conversations(
    session: AsyncSession,
    subject: AuthSubject,
    chatbot_id: uuid.UUID,
    *,
    offset: int = 0,
    limit: int = 50,
) -> list[tuple[ChatbotConversation, int]]:
    chatbot = await get_chatbot(session, subject, chatbot_id)
    return await repository.list_conversations(
        session, chatbot_id=chatbot.id, owner_id=subject.user_id, offset=offset, limit=limit
    )


async def get_conversation(
    session: AsyncSession,
    subject: AuthSubject,
    chatbot_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    offset: int = 0,
    limit: int = 200,
) -> tuple[ChatbotConversation, int, list[ChatbotMessage]]:
    """A conversation, its message count and one page of its messages (oldest first)."""
    chatbot = await get_chatbot(session, subject, chatbot_id)
    conversation = await repository.get_conversation(
        session, conversation_id, chatbot_id=chatbot.id, owner_id=subject.user_id
    )
    if conversation is None:
        raise _conversation_not_found()
    count = await repository.count_messages(session, conversation.id)
    messages = await repository.list_messages(session, conversation.id, offset=offset, limit=limit)
    return conversation, count, messages


async def delete_conversation(
    session: AsyncSession,
    subject: AuthSubject,
    chatbot_id: uuid.UUID,
    conversation_id: uuid.UUID,
    *,
    request: Request | None = None,
) -> None:
    chatbot = await get_chatbot(session, subject, chatbot_id)
    conversation = await repository.get_conversation(
        session, conversation_id, chatbot_id=chatbot.id, owner_id=subject.user_id
    )
    if conversation is None:
        raise _conversation_not_found()
    await repository.delete_conversation(session, conversation.id)
    audit.record(
        session,
        action="chatbot.conversation.delete",
        subject=subject,
        resource_type="chatbot_conversation",
        resource_id=conversation_id,
        details={"chatbot_id": str(chatbot.id)},
        request=request,
    )


# --- one conversational turn ----------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class StreamingTurn:
    """A started streamed turn: ``events`` yields text deltas, then the final ``TurnResult``."""

    conversation_id: uuid.UUID
    model: str
    sources: list[dict[str, Any]]
    refused: bool
    events: AsyncIterator[str | TurnResult]


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
    stream: bool,
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
                raise _conversation_not_found()
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
    if stream:
        turn.body["stream"] = True
        turn.body["stream_options"] = {"include_usage": True}
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
    chunks = await backends.retriever.search(
        owner, chatbot.rag_collection_id, query, top_k=chatbot.top_k, mode=chatbot.search_mode
    )
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
        stream=False,
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
        stream=True,
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
    )


async def _stream_events(
    factory: SessionFactory, turn: _Turn, chunks: AsyncGenerator[ChatChunk, None] | None
) -> AsyncIterator[str | TurnResult]:
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
