"""Chatbot endpoints: configuration, prompt templates and conversations (internal API)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request, Response

from enclava.auth.dependencies import UserSubject
from enclava.chatbot import service
from enclava.chatbot.backends import ModelCatalog
from enclava.chatbot.schemas import (
    ChatbotCreate,
    ChatbotRead,
    ChatbotUpdate,
    ConversationDetail,
    ConversationRead,
    MessageRead,
    PromptTemplateCreate,
    PromptTemplateRead,
    PromptTemplateUpdate,
    TemplateRenderRequest,
    TemplateRenderResponse,
)
from enclava.db import DbSession
from enclava.models import ChatbotConversation

internal = APIRouter(prefix="/chatbots", tags=["chatbots"])
templates = APIRouter(prefix="/prompt-templates", tags=["prompt templates"])


def model_catalog(request: Request) -> ModelCatalog | None:
    """The gateway's model registry, for checking a chatbot's model when it is configured."""
    return None


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
