from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from enclava.kit.time import utcnow
from enclava.models.base import Base, IdMixin, JSONType, TimestampMixin


class PromptTemplate(IdMixin, TimestampMixin, Base):
    """An editable prompt with ``{{variables}}``.

    Built-in templates (one per chatbot type) have no owner and a unique ``builtin_key``; they are
    seeded on first use and editable by admins. Users own the templates they create.
    """

    __tablename__ = "prompt_templates"

    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    # NULL for user templates; NULLs never collide, so only built-ins are unique here.
    builtin_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    template: Mapped[str] = mapped_column(Text)
    # [{"name", "description", "default"}]; a variable without a default must be given a value.
    variables: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)


class ChatbotInstance(IdMixin, TimestampMixin, Base):
    __tablename__ = "chatbot_instances"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    type: Mapped[str] = mapped_column(String(32), default="assistant")
    model: Mapped[str] = mapped_column(String(200))
    # Either a literal system prompt or a template (rendered at every turn with the variables).
    system_prompt: Mapped[str | None] = mapped_column(Text)
    # No ON DELETE action: a template in use cannot be deleted (checked at the end of the
    # statement, so deleting a user removes their chatbots and templates together).
    prompt_template_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("prompt_templates.id"), index=True
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
    # RAG search mode (hybrid, dense or sparse); ``score_threshold`` is on that mode's scale.
    search_mode: Mapped[str] = mapped_column(String(16), default="hybrid")
    score_threshold: Mapped[float | None]
    answer_only_from_sources: Mapped[bool] = mapped_column(default=False)
    # The fixed reply when "answer only from sources" finds nothing (a default when NULL).
    no_sources_reply: Mapped[str | None] = mapped_column(Text)
    confidential_only: Mapped[bool] = mapped_column(default=False)
    is_active: Mapped[bool] = mapped_column(default=True)


class ChatbotConversation(IdMixin, TimestampMixin, Base):
    __tablename__ = "chatbot_conversations"
    __table_args__ = (Index("ix_chatbot_conversations_bot_updated", "chatbot_id", "updated_at"),)

    # Indexed by ix_chatbot_conversations_bot_updated (chatbot_id leads it).
    chatbot_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbot_instances.id", ondelete="CASCADE")
    )
    # The conversation's owner (the chatbot's owner); ``api_key_id`` names the key that started it.
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[uuid.UUID | None]
    title: Mapped[str | None] = mapped_column(String(200))


class ChatbotMessage(IdMixin, Base):
    __tablename__ = "chatbot_messages"
    __table_args__ = (
        Index("ix_chatbot_messages_conversation_position", "conversation_id", "position"),
    )

    conversation_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("chatbot_conversations.id", ondelete="CASCADE")
    )
    # Order within the conversation (0, 1, 2, ...).
    position: Mapped[int] = mapped_column(default=0)
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    # Tokens of ``content``: the upstream's completion count for answers, an estimate otherwise.
    token_count: Mapped[int] = mapped_column(default=0)
    sources: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
