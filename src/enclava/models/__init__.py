"""Every table, imported here so ``Base.metadata`` is complete for Alembic and tests."""

from enclava.models.api_key import ApiKey
from enclava.models.app_secret import AppSecret
from enclava.models.audit import AuditLog
from enclava.models.base import Base
from enclava.models.budget import Budget
from enclava.models.chatbot import (
    ChatbotConversation,
    ChatbotInstance,
    ChatbotMessage,
    PromptTemplate,
)
from enclava.models.rag import RagCollection, RagCollectionShare, RagDocument
from enclava.models.usage import UsageRecord
from enclava.models.user import RefreshToken, User

__all__ = [
    "ApiKey",
    "AppSecret",
    "AuditLog",
    "Base",
    "Budget",
    "ChatbotConversation",
    "ChatbotInstance",
    "ChatbotMessage",
    "PromptTemplate",
    "RagCollection",
    "RagCollectionShare",
    "RagDocument",
    "RefreshToken",
    "UsageRecord",
    "User",
]
