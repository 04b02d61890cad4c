"""Audit trail: one row per mutation and authentication event.

Rows are written in the caller's transaction, so an audited change and its audit row commit or
roll back together. ``details`` must hold identifiers and flags only: never prompt text, keys,
passwords or secrets (``_REDACTED_KEYS`` is a last line of defence, not the mechanism).
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit import repository
from enclava.audit.repository import AuditFilter
from enclava.auth.subject import AuthSubject
from enclava.db import SessionFactory, transaction
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


def scoped_filter(subject: AuthSubject, requested: AuditFilter) -> AuditFilter:
    """Admins read every row; anyone else reads only rows about themselves."""
    if subject.sees_everything:
        return requested
    return AuditFilter(
        owner_id=subject.user_id,
        user_id=requested.user_id,
        action=requested.action,
        resource_type=requested.resource_type,
        start=requested.start,
        end=requested.end,
    )


async def list_logs(
    session: AsyncSession,
    subject: AuthSubject,
    requested: AuditFilter,
    *,
    page: int,
    page_size: int,
) -> tuple[list[AuditLog], int]:
    return await repository.page(
        session, scoped_filter(subject, requested), offset=(page - 1) * page_size, limit=page_size
    )


EXPORT_COLUMNS = (
    "created_at",
    "id",
    "user_id",
    "api_key_id",
    "action",
    "resource_type",
    "resource_id",
    "success",
    "ip_address",
    "user_agent",
    "request_id",
    "details",
)
_EXPORT_BATCH = 500


def _export_record(row: AuditLog) -> dict[str, Any]:
    return {
        "created_at": row.created_at.isoformat(),
        "id": str(row.id),
        "user_id": str(row.user_id) if row.user_id else None,
        "api_key_id": str(row.api_key_id) if row.api_key_id else None,
        "action": row.action,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "success": row.success,
        "ip_address": row.ip_address,
        "user_agent": row.user_agent,
        "request_id": row.request_id,
        "details": row.details,
    }


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    # A leading = + - @ would make spreadsheets evaluate the cell as a formula.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


async def export(
    factory: SessionFactory,
    subject: AuthSubject,
    requested: AuditFilter,
    *,
    fmt: Literal["csv", "jsonl"],
) -> AsyncIterator[str]:
    """Every matching row, newest first, as CSV or JSON lines, read in short batches."""
    scoped = scoped_filter(subject, requested)
    if fmt == "csv":
        yield _csv_line(list(EXPORT_COLUMNS))
    cursor = None
    while True:
        async with transaction(factory) as session:
            rows = await repository.batch_after(session, scoped, after=cursor, limit=_EXPORT_BATCH)
        if not rows:
            return
        lines = []
        for row in rows:
            record = _export_record(row)
            if fmt == "csv":
                lines.append(_csv_line([_csv_cell(record[c]) for c in EXPORT_COLUMNS]))
            else:
                lines.append(orjson.dumps(record).decode() + "\n")
        yield "".join(lines)
        cursor = (rows[-1].created_at, rows[-1].id)
