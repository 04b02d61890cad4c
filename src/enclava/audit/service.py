"""Audit trail: one row per mutation and authentication event.

Rows are written in the caller's transaction, so an audited change and its audit row commit or
roll back together. ``details`` must hold identifiers and flags only: never prompt text, keys,
passwords or secrets (``_REDACTED_KEYS`` is a last line of defence, not the mechanism).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit import repository
from enclava.auth.subject import AuthSubject
from enclava.kit.logging import request_id_var
from enclava.models import AuditLog

_REDACTED_KEYS = frozenset(
    {
        "password",
        "secret",
        "token",
        "api_key",
        "key",
        "authorization",
        "content",
        "prompt",
        "messages",
    }
)


def _clean(details: dict[str, Any]) -> dict[str, Any]:
    return {k: ("[redacted]" if k.lower() in _REDACTED_KEYS else v) for k, v in details.items()}


def client_ip(request: Request | None) -> str | None:
    if request is None or request.client is None:
        return None
    return request.client.host


def record(
    session: AsyncSession,
    *,
    action: str,
    subject: AuthSubject | None = None,
    user_id: uuid.UUID | None = None,
    resource_type: str | None = None,
    resource_id: str | uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
    success: bool = True,
    request: Request | None = None,
) -> AuditLog:
    """Add an audit row to the current transaction."""
    entry = AuditLog(
        user_id=subject.user_id if subject else user_id,
        api_key_id=subject.api_key.id if subject and subject.api_key else None,
        action=action,
        resource_type=resource_type,
        resource_id=str(resource_id) if resource_id is not None else None,
        details=_clean(details or {}),
        success=success,
        ip_address=client_ip(request),
        user_agent=(request.headers.get("user-agent") or "")[:300] or None if request else None,
        request_id=request_id_var.get(),
    )
    repository.add(session, entry)
    return entry
