"""Tiny endpoints that only authenticate, mounted by tests on their own app instances.

They stand in for the public API until its real endpoints exist, and let tests check what the
authentication dependencies do (subjects, scopes, rate limits) without any domain logic.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from enclava.auth.dependencies import AdminSubject, ApiKeySubject, UserSubject, require_scopes
from enclava.auth.subject import AuthSubject

public_probe = APIRouter(prefix="/api/v1/_probe")
internal_probe = APIRouter(prefix="/api-internal/v1/_probe")


def _describe(subject: AuthSubject) -> dict[str, Any]:
    return {
        "kind": subject.kind,
        "user_id": str(subject.user_id),
        "api_key_id": str(subject.api_key.id) if subject.api_key else None,
        "scopes": sorted(subject.scopes),
    }


@public_probe.get("/chat")
async def probe_chat(
    subject: Annotated[AuthSubject, Depends(require_scopes("llm.chat"))],
) -> dict[str, Any]:
    return _describe(subject)


@public_probe.post("/rag/{collection_id}")
async def probe_rag(
    collection_id: str,
    subject: Annotated[AuthSubject, Depends(require_scopes("rag.read", "rag.write"))],
) -> dict[str, Any]:
    return _describe(subject)


@public_probe.get("/key")
async def probe_key(subject: ApiKeySubject) -> dict[str, Any]:
    return _describe(subject)


@public_probe.get("/stream")
async def probe_stream(subject: ApiKeySubject) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for n in range(3):
            yield f"data: {n}\n\n".encode()

    return StreamingResponse(chunks(), media_type="text/event-stream")


@internal_probe.get("/user-and-admin")
async def probe_user_and_admin(user: UserSubject, admin: AdminSubject) -> dict[str, Any]:
    return _describe(admin)
