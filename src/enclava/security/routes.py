"""Which requests carry LLM content or uploads, decided by path on both APIs and the dashboard.

Kept in one place so the threat scanner, the body-size limit and the docs agree. A path is
matched after its API prefix (``/api/v1`` or ``/api-internal/v1``) is removed, so one entry
covers the public API, the internal API and the dashboard route of the same shape.
"""

from __future__ import annotations

import re

from enclava.security.asgi import INTERNAL_API_PREFIX, PUBLIC_API_PREFIX

# Request bodies (and query strings) on these routes are prompts, documents or search text.
# They legitimately contain SQL, shell and HTML, so the threat scanner never inspects them.
CONTENT_ROUTES: tuple[tuple[str, str], ...] = (
    (r"(?:/[^/]+)*/chat/completions", "OpenAI chat completions, incl. /chatbot/{id}/..."),
    (r"/completions", "legacy completions"),
    (r"/embeddings", "embeddings input"),
    (r"/chatbot/interact", "chatbot messages (public API)"),
    (r"/chatbots/[^/]+/(?:chat|interact|messages)", "chatbot messages (internal API, dashboard)"),
    (r"/chatbots/[^/]+/conversations/[^/]+/messages", "chatbot conversation messages"),
    (r"/rag/collections/[^/]+/search", "RAG search queries"),
    (r"/rag/search", "RAG search queries"),
    (r"/rag/collections/[^/]+/documents", "document uploads"),
    (r"/rag/documents", "document uploads"),
    (r"/workflows/[^/]+/run", "workflow inputs (prompts)"),
    (r"/playground(?:/.*)?", "dashboard playground"),
)

# Multipart uploads get ENCLAVA_MAX_UPLOAD_BYTES instead of ENCLAVA_MAX_REQUEST_BODY_BYTES.
UPLOAD_ROUTES: tuple[str, ...] = (r"/rag/collections/[^/]+/documents", r"/rag/documents")

# Body fields whose values are LLM content even inside management requests (a chatbot's system
# prompt, a prompt template, a workflow definition) are not scanned either.
CONTENT_FIELDS = frozenset(
    {
        "system_prompt",
        "prompt",
        "prompts",
        "messages",
        "message",
        "content",
        "template",
        "input",
        "inputs",
        "query",
        "text",
        "instructions",
        "definition",
        "examples",
        "context",
        "stop",
        "tools",
        "functions",
        "response_format",
        "welcome_message",
        "fallback_message",
    }
)
# Fields that may hold a secret are never scanned, so no part of them can reach the audit log.
_SECRET_FIELD_PARTS = (
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "passphrase",
)


def _compile(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("(?:" + "|".join(patterns) + r")/?")


_CONTENT = _compile(tuple(pattern for pattern, _ in CONTENT_ROUTES))
_UPLOAD = _compile(UPLOAD_ROUTES)


def strip_api_prefix(path: str) -> str:
    for prefix in (PUBLIC_API_PREFIX, INTERNAL_API_PREFIX):
        if path.startswith(prefix + "/"):
            return path[len(prefix) :]
    return path


def is_content_route(path: str) -> bool:
    return _CONTENT.fullmatch(strip_api_prefix(path)) is not None


def is_upload_route(path: str) -> bool:
    return _UPLOAD.fullmatch(strip_api_prefix(path)) is not None


def is_secret_field(name: str) -> bool:
    lowered = name.lower()
    return lowered == "key" or any(part in lowered for part in _SECRET_FIELD_PARTS)


def is_content_field(name: str) -> bool:
    return name.lower() in CONTENT_FIELDS
