"""Chatbot configuration and conversation history, owner-scoped."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit import service as audit
from enclava.auth.subject import AuthSubject
from enclava.chatbot import repository
from enclava.chatbot.backends import ModelCatalog
from enclava.chatbot.schemas import ChatbotCreate, ChatbotUpdate
from enclava.chatbot.service.prompt_templates import ensure_builtin_templates
from enclava.chatbot.templates import check_values, render, variables_from_rows
from enclava.errors import BadRequestError, NotFoundError, PermissionDeniedError
from enclava.kit.time import utcnow
from enclava.models import ChatbotConversation, ChatbotInstance, ChatbotMessage, PromptTemplate
from enclava.rag import service as rag_service


def chatbot_not_found() -> NotFoundError:
    return NotFoundError("Chatbot not found", code="chatbot_not_found")


def conversation_not_found() -> NotFoundError:
    return NotFoundError("Conversation not found", code="conversation_not_found")


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
    """Refuse a model known to be non-confidential for a confidential-only chatbot.

    A model the gateway does not know (yet) is accepted: the providers file may gain it later,
    and a call to a model that still does not exist fails in the gateway with model_not_found.
    """
    info = await catalog.describe_model(model) if catalog is not None else None
    if info is not None and confidential_only and not info.confidential:
        raise BadRequestError(
            f"Model {model!r} is not served by a confidential provider, and this chatbot is "
            "restricted to confidential models",
            code="model_not_confidential",
            param="model",
        )


async def _check_collection(
    session: AsyncSession, subject: AuthSubject, collection_id: uuid.UUID | None
) -> None:
    """The owner must be able to read the collection (RAG's access rule: own or shared)."""
    if collection_id is not None:
        await rag_service.get_collection(session, subject, collection_id)


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
        raise chatbot_not_found()
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
        raise conversation_not_found()
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
        raise conversation_not_found()
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
