"""Chatbot endpoints.

Internal API (JWT): configuration, prompt templates, conversations, and a chat endpoint for the
dashboard. Public API (API keys with ``chatbot.use``): ``/chatbot/interact`` and a chatbot behind
the OpenAI chat-completions shape. Endpoints that talk to a model commit the request's
transaction first: no database transaction stays open while the model answers.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response

from enclava.auth.dependencies import UserSubject, app_state, require_scopes
from enclava.auth.subject import AuthSubject
from enclava.chatbot import service
from enclava.chatbot.backends import (
    ChatbotBackends,
    GatewayChatBackend,
    ModelCatalog,
    RagRetriever,
)
from enclava.chatbot.prompting import HistoryMessage
from enclava.chatbot.responses import (
    CONVERSATION_HEADER,
    TurnStreamResponse,
    completion_body,
    interact_body,
    interact_events,
    json_response,
    openai_events,
)
from enclava.chatbot.schemas import (
    ChatbotCreate,
    ChatbotRead,
    ChatbotUpdate,
    ChatRequest,
    ConversationDetail,
    ConversationRead,
    InteractRequest,
    InteractResponse,
    MessageRead,
    PromptTemplateCreate,
    PromptTemplateRead,
    PromptTemplateUpdate,
    TemplateRenderRequest,
    TemplateRenderResponse,
)
from enclava.db import DbSession
from enclava.errors import BadRequestError
from enclava.models import ChatbotConversation

internal = APIRouter(prefix="/chatbots", tags=["chatbots"])
templates = APIRouter(prefix="/prompt-templates", tags=["prompt templates"])
public = APIRouter(prefix="/chatbot", tags=["chatbots"])

ChatbotKeySubject = Annotated[AuthSubject, Depends(require_scopes("chatbot.use"))]


def model_catalog(request: Request) -> ModelCatalog:
    """The gateway's model registry, for checking a chatbot's model."""
    return GatewayChatBackend(app_state(request))


def chatbot_backends(request: Request) -> ChatbotBackends:
    state = app_state(request)
    return ChatbotBackends(chat=GatewayChatBackend(state), retriever=RagRetriever(state))


def _conversation_read(conversation: ChatbotConversation, count: int) -> ConversationRead:
    return ConversationRead(
        id=conversation.id,
        chatbot_id=conversation.chatbot_id,
        title=conversation.title,
        api_key_id=conversation.api_key_id,
        message_count=count,
        created_at=conversation.created_at,
        updated_at=conversation.updated_at,
    )


# --- chatbots -------------------------------------------------------------------------------


@internal.post("", response_model=ChatbotRead, status_code=201)
async def create_chatbot(
    body: ChatbotCreate, subject: UserSubject, session: DbSession, request: Request
) -> ChatbotRead:
    chatbot = await service.create_chatbot(
        session, subject, body, catalog=model_catalog(request), request=request
    )
    return ChatbotRead.model_validate(chatbot)


@internal.get("", response_model=list[ChatbotRead])
async def list_chatbots(
    subject: UserSubject,
    session: DbSession,
    all_users: bool = Query(False, alias="all", description="Administrators: every user's"),
    user_id: uuid.UUID | None = Query(None, description="Administrators: one user's"),
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
) -> list[ChatbotRead]:
    chatbots = await service.list_chatbots(
        session, subject, all_users=all_users, user_id=user_id, offset=offset, limit=limit
    )
    return [ChatbotRead.model_validate(c) for c in chatbots]


@internal.get("/{chatbot_id}", response_model=ChatbotRead)
async def get_chatbot(
    chatbot_id: uuid.UUID, subject: UserSubject, session: DbSession
) -> ChatbotRead:
    chatbot = await service.get_chatbot(session, subject, chatbot_id, for_admin=True)
    return ChatbotRead.model_validate(chatbot)


@internal.patch("/{chatbot_id}", response_model=ChatbotRead)
async def update_chatbot(
    chatbot_id: uuid.UUID,
    body: ChatbotUpdate,
    subject: UserSubject,
    session: DbSession,
    request: Request,
) -> ChatbotRead:
    chatbot = await service.update_chatbot(
        session, subject, chatbot_id, body, catalog=model_catalog(request), request=request
    )
    return ChatbotRead.model_validate(chatbot)


@internal.delete("/{chatbot_id}", status_code=204)
async def delete_chatbot(
    chatbot_id: uuid.UUID, subject: UserSubject, session: DbSession, request: Request
) -> Response:
    await service.delete_chatbot(session, subject, chatbot_id, request=request)
    return Response(status_code=204)


# --- conversations --------------------------------------------------------------------------


@internal.get("/{chatbot_id}/conversations", response_model=list[ConversationRead])
async def list_conversations(
    chatbot_id: uuid.UUID,
    subject: UserSubject,
    session: DbSession,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
) -> list[ConversationRead]:
    rows = await service.list_conversations(
        session, subject, chatbot_id, offset=offset, limit=limit
    )
    return [_conversation_read(conversation, count) for conversation, count in rows]


@internal.get("/{chatbot_id}/conversations/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(
    chatbot_id: uuid.UUID,
    conversation_id: uuid.UUID,
    subject: UserSubject,
    session: DbSession,
    offset: int = Query(0, ge=0, description="First message to return"),
    limit: int = Query(200, ge=1, le=1000),
) -> ConversationDetail:
    conversation, count, messages = await service.get_conversation(
        session, subject, chatbot_id, conversation_id, offset=offset, limit=limit
    )
    summary = _conversation_read(conversation, count)
    return ConversationDetail(
        **summary.model_dump(), messages=[MessageRead.model_validate(m) for m in messages]
    )


@internal.delete("/{chatbot_id}/conversations/{conversation_id}", status_code=204)
async def delete_conversation(
    chatbot_id: uuid.UUID,
    conversation_id: uuid.UUID,
    subject: UserSubject,
    session: DbSession,
    request: Request,
) -> Response:
    await service.delete_conversation(
        session, subject, chatbot_id, conversation_id, request=request
    )
    return Response(status_code=204)


# --- prompt templates -----------------------------------------------------------------------


@templates.get("", response_model=list[PromptTemplateRead])
async def list_templates(subject: UserSubject, session: DbSession) -> list[PromptTemplateRead]:
    rows = await service.list_templates(session, subject)
    return [PromptTemplateRead.model_validate(t) for t in rows]


@templates.post("", response_model=PromptTemplateRead, status_code=201)
async def create_template(
    body: PromptTemplateCreate, subject: UserSubject, session: DbSession, request: Request
) -> PromptTemplateRead:
    template = await service.create_template(session, subject, body, request=request)
    return PromptTemplateRead.model_validate(template)


@templates.get("/{template_id}", response_model=PromptTemplateRead)
async def get_template(
    template_id: uuid.UUID, subject: UserSubject, session: DbSession
) -> PromptTemplateRead:
    template = await service.get_template(session, subject, template_id)
    return PromptTemplateRead.model_validate(template)


@templates.patch("/{template_id}", response_model=PromptTemplateRead)
async def update_template(
    template_id: uuid.UUID,
    body: PromptTemplateUpdate,
    subject: UserSubject,
    session: DbSession,
    request: Request,
) -> PromptTemplateRead:
    template = await service.update_template(session, subject, template_id, body, request=request)
    return PromptTemplateRead.model_validate(template)


@templates.delete("/{template_id}", status_code=204)
async def delete_template(
    template_id: uuid.UUID, subject: UserSubject, session: DbSession, request: Request
) -> Response:
    await service.delete_template(session, subject, template_id, request=request)
    return Response(status_code=204)


@templates.post("/{template_id}/render", response_model=TemplateRenderResponse)
async def render_template(
    template_id: uuid.UUID, body: TemplateRenderRequest, subject: UserSubject, session: DbSession
) -> TemplateRenderResponse:
    text = await service.render_template(session, subject, template_id, body.variables)
    return TemplateRenderResponse(text=text)


# --- talking to a chatbot -------------------------------------------------------------------

_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}
        },
    }
}


async def _chat(
    request: Request,
    subject: AuthSubject,
    *,
    chatbot_id: uuid.UUID,
    message: str,
    conversation_id: uuid.UUID | None,
    stream: bool,
    endpoint: str,
    seed_history: Sequence[HistoryMessage] = (),
    render_body: Callable[[service.TurnResult], dict[str, Any]] = interact_body,
    render_events: Callable[[service.StreamingTurn], AsyncIterator[bytes]] = interact_events,
) -> Response:
    """One turn, answered as JSON or (``stream``) as server-sent events."""
    turn_args: dict[str, Any] = {
        "chatbot_id": chatbot_id,
        "message": message,
        "conversation_id": conversation_id,
        "seed_history": seed_history,
        "endpoint": endpoint,
    }
    factory = app_state(request).session_factory
    backends = chatbot_backends(request)
    if stream:
        turn = await service.stream_turn(factory, subject, backends, **turn_args)
        return TurnStreamResponse(turn, render_events)
    result = await service.run_turn(factory, subject, backends, **turn_args)
    return json_response(render_body(result), {CONVERSATION_HEADER: str(result.conversation_id)})


@internal.post(
    "/{chatbot_id}/chat",
    response_model=InteractResponse,
    summary="Talk to one of your chatbots (dashboard); SSE when stream is true",
)
async def chat(
    chatbot_id: uuid.UUID,
    body: ChatRequest,
    request: Request,
    session: DbSession,
    subject: UserSubject,
) -> Response:
    await session.commit()
    return await _chat(
        request,
        subject,
        chatbot_id=chatbot_id,
        message=body.message,
        conversation_id=body.conversation_id,
        stream=body.stream,
        endpoint="chatbot.chat",
    )


@public.post(
    "/interact",
    response_model=InteractResponse,
    summary="Send a message to a chatbot; SSE when stream is true",
)
async def interact(
    body: InteractRequest, request: Request, session: DbSession, subject: ChatbotKeySubject
) -> Response:
    await session.commit()
    return await _chat(
        request,
        subject,
        chatbot_id=body.chatbot_id,
        message=body.message,
        conversation_id=body.conversation_id,
        stream=body.stream,
        endpoint="chatbot.interact",
    )


# --- a chatbot behind the OpenAI chat-completions shape -------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise BadRequestError("Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequestError("Request body must be a JSON object", code="invalid_json")
    return body


def _conversation_id(request: Request, body: dict[str, Any]) -> uuid.UUID | None:
    """From the ``X-Conversation-ID`` header or ``metadata.conversation_id`` (they must agree)."""
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequestError("metadata must be an object", param="metadata")
    candidates = {
        value
        for value in (
            request.headers.get(CONVERSATION_HEADER),
            (metadata or {}).get("conversation_id"),
        )
        if value
    }
    if not candidates:
        return None
    if len(candidates) > 1:
        raise BadRequestError(
            "X-Conversation-ID and metadata.conversation_id name different conversations",
            param="metadata.conversation_id",
        )
    try:
        return uuid.UUID(str(candidates.pop()))
    except ValueError:
        raise BadRequestError(
            "conversation_id is not a valid conversation id", param="metadata.conversation_id"
        ) from None


@public.post(
    "/{chatbot_id}/chat/completions",
    openapi_extra=_JSON_BODY,
    summary="Talk to a chatbot with any OpenAI client (memory and RAG included)",
)
async def chat_completions(
    chatbot_id: uuid.UUID, request: Request, session: DbSession, subject: ChatbotKeySubject
) -> Response:
    # Someone else's chatbot is a 404 whatever the body holds (the turn checks again).
    await service.get_chatbot(session, subject, chatbot_id)
    body = await _json_body(request)
    await session.commit()
    conversation_id = _conversation_id(request, body)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise BadRequestError("messages must be an array", param="messages")
    history, message = service.split_openai_messages(messages)
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequestError("stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequestError("stream_options must be an object", param="stream_options")
    return await _chat(
        request,
        subject,
        chatbot_id=chatbot_id,
        message=message,
        conversation_id=conversation_id,
        stream=stream,
        endpoint="chatbot.chat_completions",
        seed_history=history,
        render_body=completion_body,
        render_events=openai_events(bool((options or {}).get("include_usage"))),
    )
