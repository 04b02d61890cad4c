"""SQL for chatbots, their conversations and messages, and prompt templates.

Ownership is applied here: every lookup of an owned row takes the owner's id, so a row of another
user is simply not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.models import (
    ChatbotConversation,
    ChatbotInstance,
    ChatbotMessage,
    PromptTemplate,
)

# --- chatbots -------------------------------------------------------------------------------


async def get_chatbot(
    session: AsyncSession, chatbot_id: uuid.UUID, *, owner_id: uuid.UUID | None
) -> ChatbotInstance | None:
    """The chatbot, if owned by ``owner_id`` (``None``: any owner, for admins)."""
    query = select(ChatbotInstance).where(ChatbotInstance.id == chatbot_id)
    if owner_id is not None:
        query = query.where(ChatbotInstance.user_id == owner_id)
    return (await session.execute(query)).scalar_one_or_none()


async def list_chatbots(
    session: AsyncSession, *, owner_id: uuid.UUID | None, offset: int, limit: int
) -> list[ChatbotInstance]:
    query = select(ChatbotInstance)
    if owner_id is not None:
        query = query.where(ChatbotInstance.user_id == owner_id)
    query = query.order_by(ChatbotInstance.created_at, ChatbotInstance.id)
    return list((await session.execute(query.offset(offset).limit(limit))).scalars())


async def count_chatbots_using_template(session: AsyncSession, template_id: uuid.UUID) -> int:
    query = select(func.count()).where(ChatbotInstance.prompt_template_id == template_id)
    return int(await session.scalar(query) or 0)


async def chatbots_using_template(
    session: AsyncSession, template_id: uuid.UUID
) -> list[ChatbotInstance]:
    query = select(ChatbotInstance).where(ChatbotInstance.prompt_template_id == template_id)
    return list((await session.execute(query)).scalars())


# --- conversations --------------------------------------------------------------------------


async def get_conversation(
    session: AsyncSession,
    conversation_id: uuid.UUID,
    *,
    chatbot_id: uuid.UUID,
    owner_id: uuid.UUID,
) -> ChatbotConversation | None:
    query = select(ChatbotConversation).where(
        ChatbotConversation.id == conversation_id,
        ChatbotConversation.chatbot_id == chatbot_id,
        ChatbotConversation.user_id == owner_id,
    )
    return (await session.execute(query)).scalar_one_or_none()


async def list_conversations(
    session: AsyncSession,
    *,
    chatbot_id: uuid.UUID,
    owner_id: uuid.UUID,
    offset: int,
    limit: int,
) -> list[tuple[ChatbotConversation, int]]:
    """Conversations, most recently active first, with their message counts."""
    counts = (
        select(ChatbotMessage.conversation_id, func.count().label("n"))
        .group_by(ChatbotMessage.conversation_id)
        .subquery()
    )
    query = (
        select(ChatbotConversation, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.conversation_id == ChatbotConversation.id)
        .where(
            ChatbotConversation.chatbot_id == chatbot_id,
            ChatbotConversation.user_id == owner_id,
        )
        .order_by(ChatbotConversation.updated_at.desc(), ChatbotConversation.id)
        .offset(offset)
        .limit(limit)
    )
    return [(row[0], int(row[1])) for row in (await session.execute(query)).all()]


async def delete_conversation(session: AsyncSession, conversation_id: uuid.UUID) -> None:
    # Messages go with it through ON DELETE CASCADE (SQLite runs with foreign_keys=ON).
    await session.execute(
        delete(ChatbotConversation).where(ChatbotConversation.id == conversation_id)
    )


# --- messages -------------------------------------------------------------------------------


async def list_messages(
    session: AsyncSession, conversation_id: uuid.UUID, *, offset: int = 0, limit: int | None = None
) -> list[ChatbotMessage]:
    query = (
        select(ChatbotMessage)
        .where(ChatbotMessage.conversation_id == conversation_id)
        .order_by(ChatbotMessage.position, ChatbotMessage.created_at)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    return list((await session.execute(query)).scalars())


async def recent_messages(
    session: AsyncSession, conversation_id: uuid.UUID, *, limit: int
) -> list[ChatbotMessage]:
    """The newest ``limit`` messages, oldest first."""
    query = (
        select(ChatbotMessage)
        .where(ChatbotMessage.conversation_id == conversation_id)
        .order_by(ChatbotMessage.position.desc(), ChatbotMessage.created_at.desc())
        .limit(limit)
    )
    rows = list((await session.execute(query)).scalars())
    rows.reverse()
    return rows


async def count_messages(session: AsyncSession, conversation_id: uuid.UUID) -> int:
    query = select(func.count()).where(ChatbotMessage.conversation_id == conversation_id)
    return int(await session.scalar(query) or 0)


async def next_position(session: AsyncSession, conversation_id: uuid.UUID) -> int:
    query = select(func.max(ChatbotMessage.position)).where(
        ChatbotMessage.conversation_id == conversation_id
    )
    current = await session.scalar(query)
    return 0 if current is None else int(current) + 1


def add_all(session: AsyncSession, rows: Sequence[object]) -> None:
    session.add_all(rows)


# --- prompt templates -----------------------------------------------------------------------


async def get_visible_template(
    session: AsyncSession, template_id: uuid.UUID, *, user_id: uuid.UUID
) -> PromptTemplate | None:
    """A built-in template or one owned by ``user_id``."""
    query = select(PromptTemplate).where(
        PromptTemplate.id == template_id,
        or_(PromptTemplate.user_id.is_(None), PromptTemplate.user_id == user_id),
    )
    return (await session.execute(query)).scalar_one_or_none()


async def list_visible_templates(
    session: AsyncSession, *, user_id: uuid.UUID
) -> list[PromptTemplate]:
    query = (
        select(PromptTemplate)
        .where(or_(PromptTemplate.user_id.is_(None), PromptTemplate.user_id == user_id))
        .order_by(PromptTemplate.user_id.is_not(None), PromptTemplate.name, PromptTemplate.id)
    )
    return list((await session.execute(query)).scalars())


async def builtin_keys(session: AsyncSession) -> set[str]:
    query = select(PromptTemplate.builtin_key).where(PromptTemplate.builtin_key.is_not(None))
    return {key for key in (await session.execute(query)).scalars() if key}


async def get_builtin_template(session: AsyncSession, key: str) -> PromptTemplate | None:
    query = select(PromptTemplate).where(PromptTemplate.builtin_key == key)
    return (await session.execute(query)).scalar_one_or_none()
