"""RAG endpoints, the same on both APIs.

``internal`` (dashboard, JWT) and ``public`` (API keys with ``rag.read`` / ``rag.write``) are
built from one set of endpoints; only the authentication differs. Sharing is an administrator
action and exists on the internal API only.
"""

# No ``from __future__ import annotations`` here: the endpoints are defined inside a factory and
# FastAPI must see their dependency annotations as objects, not as strings to resolve later.

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from enclava.auth.dependencies import UserSubject, require_scopes
from enclava.auth.subject import AuthSubject
from enclava.db import DbSession, transaction
from enclava.kit.pagination import Offset
from enclava.rag import repository, service
from enclava.rag.runtime import Rag, RagRuntime
from enclava.rag.schemas import (
    CollectionCreate,
    CollectionRead,
    DocumentRead,
    SearchRequest,
    SearchResponse,
    ShareCreate,
    ShareRead,
)
from enclava.rag.uploads import FILE_FIELD, receive_upload

EVENT_POLL_S = 0.5
EVENT_KEEPALIVE_S = 15.0
EVENT_MAX_S = 30 * 60.0

DocumentStatus = Literal["queued", "processing", "processed", "failed"]

_UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {"type": "string", "format": "binary"},
                        "metadata": {
                            "type": "string",
                            "description": "Optional JSON object of document metadata "
                            "(string, number or boolean values), usable in search filters.",
                        },
                    },
                }
            }
        },
    }
}


def _build(Reader: Any, Writer: Any) -> APIRouter:
    router = APIRouter(prefix="/rag", tags=["rag"])

    @router.post("/collections", response_model=CollectionRead, status_code=201)
    async def create_collection(
        body: CollectionCreate, subject: Writer, session: DbSession, rag: Rag, request: Request
    ) -> CollectionRead:
        return await service.create_collection(
            session, subject, rag=rag, body=body, request=request
        )

    @router.get("/collections", response_model=list[CollectionRead])
    async def list_collections(
        subject: Reader,
        session: DbSession,
        offset: Offset = 0,
        limit: int = Query(100, ge=1, le=500),
        all_users: bool = Query(
            False, alias="all", description="Administrators: every user's collections"
        ),
    ) -> list[CollectionRead]:
        return await service.list_collections(
            session, subject, offset=offset, limit=limit, all_users=all_users
        )

    @router.get("/collections/{collection_id}", response_model=CollectionRead)
    async def get_collection(
        collection_id: uuid.UUID, subject: Reader, session: DbSession
    ) -> CollectionRead:
        return await service.get_collection(session, subject, collection_id)

    @router.delete("/collections/{collection_id}", status_code=204)
    async def delete_collection(
        collection_id: uuid.UUID, subject: Writer, session: DbSession, rag: Rag, request: Request
    ) -> Response:
        await service.delete_collection(session, subject, collection_id, rag=rag, request=request)
        return Response(status_code=204)

    @router.post(
        "/collections/{collection_id}/documents",
        response_model=DocumentRead,
        status_code=202,
        responses={
            200: {"model": DocumentRead, "description": "Duplicate of an existing document"}
        },
        openapi_extra=_UPLOAD_BODY,
    )
    async def upload_document(
        collection_id: uuid.UUID,
        subject: Writer,
        session: DbSession,
        rag: Rag,
        request: Request,
        response: Response,
    ) -> DocumentRead:
        await service.check_upload_access(session, subject, collection_id)
        # End the short read transaction before a possibly long upload: on SQLite an open
        # transaction holds the write lock, which would stall every other writer meanwhile.
        await session.commit()
        upload = await receive_upload(request, rag.incoming_dir, rag.settings.max_upload_bytes)
        try:
            document = await service.add_document(
                session, subject, collection_id, upload, rag=rag, request=request
            )
        finally:
            await asyncio.to_thread(upload.discard)  # a no-op once the file was moved
        if document.duplicate:
            response.status_code = 200
        return document

    @router.get("/collections/{collection_id}/documents", response_model=list[DocumentRead])
    async def list_documents(
        collection_id: uuid.UUID,
        subject: Reader,
        session: DbSession,
        status: DocumentStatus | None = None,
        offset: Offset = 0,
        limit: int = Query(100, ge=1, le=1000),
    ) -> list[DocumentRead]:
        return await service.list_documents(
            session, subject, collection_id, status=status, offset=offset, limit=limit
        )

    @router.get("/documents/{document_id}", response_model=DocumentRead)
    async def get_document(
        document_id: uuid.UUID, subject: Reader, session: DbSession
    ) -> DocumentRead:
        return await service.get_document(session, subject, document_id)

    @router.delete("/documents/{document_id}", status_code=204)
    async def delete_document(
        document_id: uuid.UUID, subject: Writer, session: DbSession, rag: Rag, request: Request
    ) -> Response:
        await service.delete_document(session, subject, document_id, rag=rag, request=request)
        return Response(status_code=204)

    @router.get(
        "/documents/{document_id}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def document_events(
        document_id: uuid.UUID, subject: Reader, session: DbSession, rag: Rag
    ) -> StreamingResponse:
        """Server-sent ``status`` events until the document is processed or failed."""
        first = await service.get_document(session, subject, document_id)
        return StreamingResponse(
            _status_events(rag, subject.user_id, first),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @router.post("/collections/{collection_id}/search", response_model=SearchResponse)
    async def search(
        collection_id: uuid.UUID, body: SearchRequest, subject: Reader, session: DbSession, rag: Rag
    ) -> SearchResponse:
        hits = await service.search(
            session,
            subject,
            collection_id,
            body.query,
            rag=rag,
            top_k=body.top_k,
            mode=body.mode,
            filters=body.filter,
            score_threshold=body.score_threshold,
        )
        return SearchResponse(mode=body.mode, results=hits)

    return router


def _event(document: DocumentRead) -> bytes:
    data = {
        "id": str(document.id),
        "status": document.status,
        "progress": round(document.progress, 4),
        "chunk_count": document.chunk_count,
        "error": document.error,
    }
    return f"event: status\ndata: {json.dumps(data)}\n\n".encode()


async def _status_events(
    rag: RagRuntime, user_id: uuid.UUID, first: DocumentRead
) -> AsyncIterator[bytes]:
    """Poll the row (any instance may be processing it) and send each change once."""
    yield _event(first)
    last = (first.status, first.progress, first.chunk_count)
    started = last_sent = time.monotonic()
    while first.status not in ("processed", "failed"):
        await asyncio.sleep(EVENT_POLL_S)
        async with transaction(rag.session_factory) as session:
            found = await repository.get_document(session, first.id, user_id=user_id, need="read")
        if found is None:  # deleted, or access revoked
            yield b'event: gone\ndata: {"id": "' + str(first.id).encode() + b'"}\n\n'
            return
        current = service.document_view(found[0])
        state = (current.status, current.progress, current.chunk_count)
        now = time.monotonic()
        if state != last:
            yield _event(current)
            last, last_sent = state, now
        elif now - last_sent > EVENT_KEEPALIVE_S:
            yield b": keep-alive\n\n"
            last_sent = now
        if current.status in ("processed", "failed") or now - started > EVENT_MAX_S:
            return


internal = _build(UserSubject, UserSubject)
public = _build(
    Annotated[AuthSubject, Depends(require_scopes("rag.read"))],
    Annotated[AuthSubject, Depends(require_scopes("rag.write"))],
)

# Sharing: administrators grant and revoke; owners may see who has access.
admin_router = APIRouter(tags=["rag"])


@admin_router.get("/collections/{collection_id}/shares", response_model=list[ShareRead])
async def list_shares(
    collection_id: uuid.UUID, subject: UserSubject, session: DbSession
) -> list[ShareRead]:
    return await service.list_shares(session, subject, collection_id)


@admin_router.post("/collections/{collection_id}/shares", response_model=ShareRead, status_code=201)
async def share_collection(
    collection_id: uuid.UUID,
    body: ShareCreate,
    subject: UserSubject,
    session: DbSession,
    request: Request,
) -> ShareRead:
    return await service.share_collection(
        session, subject, collection_id, body=body, request=request
    )


@admin_router.delete("/collections/{collection_id}/shares/{user_id}", status_code=204)
async def unshare_collection(
    collection_id: uuid.UUID,
    user_id: uuid.UUID,
    subject: UserSubject,
    session: DbSession,
    request: Request,
) -> Response:
    await service.unshare_collection(session, subject, collection_id, user_id, request=request)
    return Response(status_code=204)


internal.include_router(admin_router)
