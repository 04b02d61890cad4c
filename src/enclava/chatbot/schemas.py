from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SearchMode = Literal["hybrid", "dense", "sparse"]
ChatbotType = Literal[
    "assistant", "customer_support", "teacher", "researcher", "creative_writer", "custom"
]
# Columns a PATCH may clear with null; every other field must keep a value.
NULLABLE_CHATBOT_FIELDS = frozenset(
    {
        "system_prompt",
        "prompt_template_id",
        "rag_collection_id",
        "memory_tokens",
        "score_threshold",
        "no_sources_reply",
    }
)

MAX_PROMPT_CHARS = 50_000
MAX_MESSAGE_CHARS = 100_000

Name = Field(min_length=1, max_length=200)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _ChatbotSettings(_Strict):
    system_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    prompt_template_id: uuid.UUID | None = None
    template_variables: dict[str, str] = Field(default_factory=dict, max_length=50)
    temperature: float = Field(default=0.7, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int = Field(default=1000, ge=1, le=131_072)
    memory_messages: int = Field(default=10, ge=0, le=500)
    memory_tokens: int | None = Field(default=None, ge=1, le=2_000_000)
    rag_collection_id: uuid.UUID | None = None
    top_k: int = Field(default=5, ge=1, le=50)
    search_mode: SearchMode = "hybrid"
    score_threshold: float | None = Field(default=None, allow_inf_nan=False)
    answer_only_from_sources: bool = False
    no_sources_reply: str | None = Field(default=None, max_length=2000)
    confidential_only: bool = False


class ChatbotCreate(_ChatbotSettings):
    name: str = Name
    type: ChatbotType = "assistant"
    model: str = Field(min_length=1, max_length=200)


class ChatbotUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    type: ChatbotType | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    system_prompt: str | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    prompt_template_id: uuid.UUID | None = None
    template_variables: dict[str, str] | None = Field(default=None, max_length=50)
    temperature: float | None = Field(default=None, ge=0, le=2, allow_inf_nan=False)
    max_tokens: int | None = Field(default=None, ge=1, le=131_072)
    memory_messages: int | None = Field(default=None, ge=0, le=500)
    memory_tokens: int | None = Field(default=None, ge=1, le=2_000_000)
    rag_collection_id: uuid.UUID | None = None
    top_k: int | None = Field(default=None, ge=1, le=50)
    search_mode: SearchMode | None = None
    score_threshold: float | None = Field(default=None, allow_inf_nan=False)
    answer_only_from_sources: bool | None = None
    no_sources_reply: str | None = Field(default=None, max_length=2000)
    confidential_only: bool | None = None
    is_active: bool | None = None

    @model_validator(mode="after")
    def _no_null_for_required(self) -> ChatbotUpdate:
        for name in self.model_fields_set - NULLABLE_CHATBOT_FIELDS:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self

    def changes(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.model_fields_set}


class ChatbotRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID
    name: str
    type: str
    model: str
    system_prompt: str | None
    prompt_template_id: uuid.UUID | None
    template_variables: dict[str, Any]
    temperature: float
    max_tokens: int
    memory_messages: int
    memory_tokens: int | None
    rag_collection_id: uuid.UUID | None
    top_k: int
    search_mode: str
    score_threshold: float | None
    answer_only_from_sources: bool
    no_sources_reply: str | None
    confidential_only: bool
    is_active: bool
    created_at: datetime
    updated_at: datetime


class SourceRef(BaseModel):
    index: int
    document_id: str
    filename: str
    page: int | None = None
    score: float
    snippet: str


class MessageRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    role: str
    content: str
    token_count: int
    sources: list[SourceRef]
    created_at: datetime


class ConversationRead(BaseModel):
    id: uuid.UUID
    chatbot_id: uuid.UUID
    title: str | None
    api_key_id: uuid.UUID | None
    message_count: int
    created_at: datetime
    updated_at: datetime


class ConversationDetail(ConversationRead):
    messages: list[MessageRead]


# --- prompt templates -----------------------------------------------------------------------


class TemplateVariable(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = Field(default=None, max_length=500)
    default: str | None = Field(default=None, max_length=10_000)


class PromptTemplateCreate(_Strict):
    name: str = Name
    description: str | None = Field(default=None, max_length=2000)
    template: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    variables: list[TemplateVariable] = Field(default_factory=list, max_length=50)


class PromptTemplateUpdate(_Strict):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    template: str | None = Field(default=None, min_length=1, max_length=MAX_PROMPT_CHARS)
    variables: list[TemplateVariable] | None = Field(default=None, max_length=50)

    @field_validator("name", "template", "variables")
    @classmethod
    def _not_null(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("cannot be null")
        return value


class PromptTemplateRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: uuid.UUID | None
    builtin_key: str | None
    name: str
    description: str | None
    template: str
    variables: list[TemplateVariable]
    created_at: datetime
    updated_at: datetime


class TemplateRenderRequest(_Strict):
    variables: dict[str, str] = Field(default_factory=dict, max_length=50)


class TemplateRenderResponse(BaseModel):
    text: str


# --- talking to a chatbot -------------------------------------------------------------------


class ChatRequest(_Strict):
    """A dashboard user's turn (internal API)."""

    message: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    conversation_id: uuid.UUID | None = None
    stream: bool = False


class InteractRequest(ChatRequest):
    """``POST /api/v1/chatbot/interact``."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    chatbot_id: uuid.UUID


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class InteractResponse(BaseModel):
    response: str
    conversation_id: uuid.UUID
    # ``None`` only if the chatbot or conversation was deleted while the model was answering.
    message_id: uuid.UUID | None
    sources: list[SourceRef]
    usage: Usage
    # True when "answer only from sources" found nothing and the fixed reply was given.
    refused: bool
