from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from enclava.kit.time import utcnow
from enclava.models.base import Base, IdMixin, JSONType, TimestampMixin


class PromptTemplate(IdMixin, TimestampMixin, Base):
    """An editable prompt with ``{variables}``; built-in templates have no owner."""

    __tablename__ = "prompt_templates"

    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    key: Mapped[str] = mapped_column(String(100), index=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str] = mapped_column(Text)
    variables: Mapped[list[str]] = mapped_column(JSONType, default=list)


class ChatbotInstance(IdMixin, TimestampMixin, Base):
    __tablename__ = "chatbot_instances"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32), default="assistant")
    model: Mapped[str] = mapped_column(String(200))
    system_prompt: Mapped[str | None] = mapped_column(Text)
    prompt_template_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("prompt_templates.id", ondelete="SET NULL")
    )
    template_variables: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    temperature: Mapped[float] = mapped_column(default=0.7)
    max_tokens: Mapped[int] = mapped_column(default=1000)
    memory_messages: Mapped[int] = mapped_column(default=10)
    memory_tokens: Mapped[int | None]
    rag_collection_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("rag_collections.id", ondelete="SET NULL")
    )
    top_k: Mapped[int] = mapped_column(default=5)
    score_threshold: Mapped[float | None]
    answer_only_from_sources: Mapped[bool] = mapped_column(default=False)
    confidential_only: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)


class ChatbotConversation(IdMixin, TimestampMixin, Base):
    __tablename__ = "chatbot_conversations"

    chatbot_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbot_instances.id", ondelete="CASCADE"), index=True
    )
    # The conversation's owner: the user behind the JWT or the API key that started it.
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[uuid.UUID | None]
    title: Mapped[str | None] = mapped_column(String(200))


class ChatbotMessage(IdMixin, Base):
    __tablename__ = "chatbot_messages"

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbot_conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(default=0)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
