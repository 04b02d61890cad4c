"""The audit trail on the internal API: admins read every row, users the rows about them."""

from __future__ import annotations

import uuid
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import AwareDatetime

from enclava.audit import service
from enclava.audit.repository import AuditFilter
from enclava.audit.schemas import AuditLogPage, AuditLogRead
from enclava.auth.dependencies import UserSubject, app_state
from enclava.budgets.service import flush_settlements
from enclava.db import DbSession

router = APIRouter(prefix="/audit-logs", tags=["audit"])

_MEDIA_TYPES = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


@router.get("", response_model=AuditLogPage)
async def list_audit_logs(
    subject: UserSubject,
    session: DbSession,
    request: Request,
    user_id: uuid.UUID | None = None,
    action: str | None = Query(None, max_length=100),
    resource: str | None = Query(None, max_length=64, description="Resource type, e.g. api_key"),
    start: AwareDatetime | None = Query(None, description="Inclusive, ISO 8601 with offset"),
    end: AwareDatetime | None = Query(None, description="Exclusive, ISO 8601 with offset"),
    page: int = Query(1, ge=1, le=1_000_000),
    page_size: int = Query(50, ge=1, le=500),
    format: Literal["json", "csv", "jsonl"] = "json",
) -> AuditLogPage | StreamingResponse:
    # LLM calls are audited with their settlement, written behind the response.
    await flush_settlements(app_state(request))
    requested = AuditFilter(
        user_id=user_id, action=action, resource_type=resource, start=start, end=end
    )
    if format != "json":
        # An export is every matching row (page and page_size do not apply), streamed.
        lines = service.export(app_state(request).session_factory, subject, requested, fmt=format)
        return StreamingResponse(
            lines,
            media_type=_MEDIA_TYPES[format],
            headers={"Content-Disposition": f'attachment; filename="audit-logs.{format}"'},
        )
    rows, total = await service.list_logs(
        session, subject, requested, page=page, page_size=page_size
    )
    return AuditLogPage(
        items=[AuditLogRead.model_validate(r) for r in rows],
        total=total,
        page=page,
        page_size=page_size,
    )
