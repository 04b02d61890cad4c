from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class AuditLogRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    created_at: datetime
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    action: str
    resource_type: str | None
    resource_id: str | None
    success: bool
    details: dict[str, Any]
    ip_address: str | None
    user_agent: str | None
    request_id: str | None


class AuditLogPage(BaseModel):
    items: list[AuditLogRead]
    total: int
    page: int
    page_size: int
