"""RAG rules: who may see and change which collection, uploads, deletion and search.

Access: a user reaches a collection they own, or one an administrator shared with them
(``read``: list, read and search; ``write``: also add and delete documents). Deleting a
collection and seeing its shares is the owner's (and administrators') business. A collection the
user cannot see answers 404, exactly like one that does not exist; one they can see but not
change answers 403. API keys act as their owner, within the ``rag.read``/``rag.write`` scopes
the router demands.

For other domains (chatbots): ``search(session, subject, collection_id, query, rag=...,
top_k=..., mode=..., score_threshold=...) -> list[SearchHit]``; it applies the same access rule
for ``subject``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from fastapi import Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit.service import record
from enclava.auth.subject import AuthSubject
from enclava.errors import (
    AppError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from enclava.kit.jobs import enqueue_after_commit, on_commit, on_rollback
from enclava.models import RagCollection, RagDocument
from enclava.rag import repository
from enclava.rag.parsing import (
    LEGACY_OFFICE_EXTENSIONS,
    DocumentFormat,
    detect_format,
    sniff_office_format,
)
from enclava.rag.repository import Need
from enclava.rag.runtime import (
    PROCESS_DOCUMENT_JOB,
    RagRuntime,
    move_to_trash,
    remove_tree,
)
from enclava.rag.schemas import (
    MAX_METADATA_KEYS,
    METADATA_KEY,
    CollectionCreate,
    CollectionRead,
    DocumentRead,
    SearchHit,
    SearchMode,
    ShareCreate,
    ShareRead,
)
from enclava.rag.sparse import query_vector
from enclava.rag.uploads import ReceivedUpload
from enclava.rag.vectorstore import FilterValue


class UnsupportedFileTypeError(AppError):
    status_code = 415
    code = "unsupported_file_type"


# --- collections -------------------------------------------------------------------------


async def _collection(
    session: AsyncSession, subject: AuthSubject, collection_id: uuid.UUID, need: Need
) -> RagCollection:
    collection = await repository.get_collection(
        session, collection_id, user_id=subject.user_id, need=need
    )
    if collection is not None:
        return collection
    if need != "read" and await repository.get_collection(
        session, collection_id, user_id=subject.user_id, need="read"
    ):
        if need == "write":
            raise PermissionDeniedError(
                "You have read-only access to this collection", code="read_only_collection"
            )
        raise PermissionDeniedError(
            "Only the collection's owner can do this", code="collection_owner_required"
        )
    raise NotFoundError("Collection not found", code="collection_not_found")


async def _views(
    session: AsyncSession, subject: AuthSubject, collections: list[RagCollection]
) -> list[CollectionRead]:
    ids = [c.id for c in collections]
    counts = await repository.document_counts(session, ids)
    emails = await repository.emails(session, [c.user_id for c in collections])
    shares = await repository.share_permissions(session, subject.user_id, ids)
    views = []
    for collection in collections:
        # "none": an administrator's overview of a collection they may not read.
        access = (
            "owner" if collection.user_id == subject.user_id else shares.get(collection.id, "none")
        )
        views.append(
            CollectionRead(
                id=collection.id,
                name=collection.name,
                description=collection.description,
                embedding_model=collection.embedding_model,
                chunk_size=collection.chunk_size,
                chunk_overlap=collection.chunk_overlap,
                owner_id=collection.user_id,
                owner_email=emails.get(collection.user_id, ""),
                access=access,
                document_count=counts.get(collection.id, 0),
                created_at=collection.created_at,
                updated_at=collection.updated_at,
            )
        )
    return views


async def create_collection(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    rag: RagRuntime,
    body: CollectionCreate,
    request: Request | None = None,
) -> CollectionRead:
    model = body.embedding_model or rag.embedders.default_model_id
    if model not in rag.embedders:
        known = ", ".join(rag.embedders.model_ids())
        raise BadRequestError(
            f"Unknown embedding model {model!r}; available: {known}", param="embedding_model"
        )
    if await repository.find_by_name(session, subject.user_id, body.name):
        raise ConflictError(
            f"You already have a collection named {body.name!r}", code="collection_exists"
        )
    collection_id = uuid.uuid4()
    collection = RagCollection(
        id=collection_id,
        user_id=subject.user_id,
        name=body.name,
        description=body.description,
        qdrant_collection_name=f"enclava_{collection_id.hex}",
        embedding_model=model,
        chunk_size=body.chunk_size,
        chunk_overlap=body.chunk_overlap,
    )
    try:
        async with session.begin_nested():
            session.add(collection)
            await session.flush()
    except IntegrityError:
        raise ConflictError(
            f"You already have a collection named {body.name!r}", code="collection_exists"
        ) from None
    record(
        session,
        action="rag.collection.create",
        subject=subject,
        resource_type="rag_collection",
        resource_id=collection.id,
        details={"embedding_model": model},
        request=request,
    )
    return (await _views(session, subject, [collection]))[0]


async def list_collections(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    offset: int = 0,
    limit: int = 100,
    all_users: bool = False,
) -> list[CollectionRead]:
    """Collections the subject can read; ``all_users`` (administrators) lists every one."""
    if all_users and not (subject.is_admin and subject.kind == "user"):
        raise PermissionDeniedError("Administrator role required", code="admin_required")
    collections = await repository.list_collections(
        session, user_id=None if all_users else subject.user_id, offset=offset, limit=limit
    )
    return await _views(session, subject, list(collections))


async def get_collection(
    session: AsyncSession, subject: AuthSubject, collection_id: uuid.UUID
) -> CollectionRead:
    collection = await _collection(session, subject, collection_id, "read")
    return (await _views(session, subject, [collection]))[0]


async def delete_collection(
    session: AsyncSession,
    subject: AuthSubject,
    collection_id: uuid.UUID,
    *,
    rag: RagRuntime,
    request: Request | None = None,
) -> None:
    """Delete the collection, its documents, vectors and stored files (owner only)."""
    collection = await _collection(session, subject, collection_id, "owner")
    await rag.store.drop_collection(collection.qdrant_collection_name)
    await session.delete(collection)
    await session.flush()
    record(
        session,
        action="rag.collection.delete",
        subject=subject,
        resource_type="rag_collection",
        resource_id=collection_id,
        request=request,
    )
    directory = rag.collection_dir(collection_id)

    def remove_files() -> None:
        trashed = move_to_trash(rag, directory)
        if trashed is not None:
            asyncio.get_running_loop().run_in_executor(None, remove_tree, trashed)

    on_commit(session, remove_files)


# --- sharing (administrators) ------------------------------------------------------------


def _require_admin(subject: AuthSubject) -> None:
    if not subject.is_admin or subject.kind != "user":
        raise PermissionDeniedError("Administrator role required", code="admin_required")


async def share_collection(
    session: AsyncSession,
    subject: AuthSubject,
    collection_id: uuid.UUID,
    *,
    body: ShareCreate,
    request: Request | None = None,
) -> ShareRead:
    _require_admin(subject)
    collection = await repository.get_collection_unscoped(session, collection_id)
    if collection is None:
        raise NotFoundError("Collection not found", code="collection_not_found")
    from enclava.auth import repository as users

    user = (
        await users.get_user(session, body.user_id)
        if body.user_id is not None
        else await repository.user_by_email(session, body.email or "")
    )
    if user is None:
        raise NotFoundError("User not found", code="user_not_found")
    if user.id == collection.user_id:
        raise BadRequestError("The owner already has full access", code="share_with_owner")
    share = await repository.upsert_share(session, collection.id, user.id, body.permission)
    record(
        session,
        action="rag.collection.share",
        subject=subject,
        resource_type="rag_collection",
        resource_id=collection.id,
        details={"user_id": str(user.id), "permission": body.permission},
        request=request,
    )
    return ShareRead(user_id=user.id, email=user.email, permission=share.permission)


async def list_shares(
    session: AsyncSession, subject: AuthSubject, collection_id: uuid.UUID
) -> list[ShareRead]:
    if subject.is_admin and subject.kind == "user":
        collection = await repository.get_collection_unscoped(session, collection_id)
        if collection is None:
            raise NotFoundError("Collection not found", code="collection_not_found")
    else:
        await _collection(session, subject, collection_id, "owner")
    rows = await repository.list_shares(session, collection_id)
    return [
        ShareRead(user_id=share.user_id, email=email, permission=share.permission)
        for share, email in rows
    ]


async def unshare_collection(
    session: AsyncSession,
    subject: AuthSubject,
    collection_id: uuid.UUID,
    user_id: uuid.UUID,
    *,
    request: Request | None = None,
) -> None:
    _require_admin(subject)
    if not await repository.delete_share(session, collection_id, user_id):
        raise NotFoundError("Share not found", code="share_not_found")
    record(
        session,
        action="rag.collection.unshare",
        subject=subject,
        resource_type="rag_collection",
        resource_id=collection_id,
        details={"user_id": str(user_id)},
        request=request,
    )


# --- documents ---------------------------------------------------------------------------


def document_view(document: RagDocument, *, duplicate: bool = False) -> DocumentRead:
    metadata = document.metadata_ or {}
    return DocumentRead(
        id=document.id,
        collection_id=document.collection_id,
        filename=document.filename,
        format=metadata.get("format"),
        content_type=document.content_type,
        size_bytes=document.size_bytes,
        sha256=document.content_hash,
        status=document.status,
        error=document.error,
        progress=document.progress,
        chunk_count=document.chunk_count,
        page_count=document.page_count,
        metadata=dict(metadata.get("user") or {}),
        timings=metadata.get("timings"),
        duplicate=duplicate,
        created_at=document.created_at,
        updated_at=document.updated_at,
        processed_at=document.processed_at,
    )


async def check_upload_access(
    session: AsyncSession, subject: AuthSubject, collection_id: uuid.UUID
) -> None:
    """Fail before the body is read when the subject may not add documents here."""
    await _collection(session, subject, collection_id, "write")


def parse_user_metadata(raw: str | None) -> dict[str, Any]:
    if raw is None or not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        raise BadRequestError("metadata must be a JSON object", param="metadata") from None
    if not isinstance(value, dict):
        raise BadRequestError("metadata must be a JSON object", param="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise BadRequestError(f"metadata has more than {MAX_METADATA_KEYS} keys", param="metadata")
    for key, item in value.items():
        if not METADATA_KEY.match(key):
            raise BadRequestError(
                f"metadata key {key!r} must be 1-64 letters, digits, '_' or '-'", param="metadata"
            )
        if not isinstance(item, str | int | float | bool) or (
            isinstance(item, str) and len(item) > 500
        ):
            raise BadRequestError(
                f"metadata value of {key!r} must be a string (up to 500 characters), "
                "number or boolean",
                param="metadata",
            )
    return value


async def _detect(upload: ReceivedUpload) -> DocumentFormat:
    suffix = "." + upload.filename.rpartition(".")[2].lower() if "." in upload.filename else ""
    if suffix in LEGACY_OFFICE_EXTENSIONS:
        raise UnsupportedFileTypeError(
            f"Legacy Office files ({suffix}) are not supported; save as .docx, .xlsx or .pptx"
        )
    fmt = detect_format(upload.filename, upload.declared_type, upload.head)
    if fmt is None and upload.head.startswith(b"PK\x03\x04"):
        fmt = await asyncio.to_thread(sniff_office_format, upload.path)
    if fmt is None:
        raise UnsupportedFileTypeError(
            "Unsupported file type; upload PDF, DOCX, XLSX, PPTX, HTML, Markdown, TXT, CSV, "
            "JSON or JSONL"
        )
    return fmt


async def add_document(
    session: AsyncSession,
    subject: AuthSubject,
    collection_id: uuid.UUID,
    upload: ReceivedUpload,
    *,
    rag: RagRuntime,
    request: Request | None = None,
) -> DocumentRead:
    """Register an uploaded file and queue it for processing.

    Identical content already in the collection is not stored or embedded again: the existing
    document comes back with ``duplicate=True``.
    """
    collection = await _collection(session, subject, collection_id, "write")
    if upload.size == 0:
        raise BadRequestError("The file is empty", code="empty_file")
    user_metadata = parse_user_metadata(upload.fields.get("metadata"))
    fmt = await _detect(upload)

    existing = await repository.find_by_hash(session, collection.id, upload.sha256)
    if existing is not None:
        return document_view(existing, duplicate=True)

    document_id = uuid.uuid4()
    stored_path = f"rag/{collection.id}/{document_id}"
    document = RagDocument(
        id=document_id,
        collection_id=collection.id,
        user_id=subject.user_id,
        filename=upload.filename,
        stored_path=stored_path,
        content_type=fmt.media_type,
        size_bytes=upload.size,
        content_hash=upload.sha256,
        status="queued",
        progress=0.0,
        attempts=0,
        metadata_={"format": fmt.value, "user": user_metadata},
    )
    try:
        async with session.begin_nested():
            session.add(document)
            await session.flush()
    except IntegrityError:
        # The same content arrived concurrently and won the unique constraint.
        existing = await repository.find_by_hash(session, collection.id, upload.sha256)
        if existing is None:
            raise
        return document_view(existing, duplicate=True)

    final_path = rag.document_path(stored_path)

    def move() -> None:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        upload.path.replace(final_path)

    await asyncio.to_thread(move)
    on_rollback(session, lambda: final_path.unlink(missing_ok=True))
    enqueue_after_commit(session, rag.jobs, PROCESS_DOCUMENT_JOB, str(document_id))
    record(
        session,
        action="rag.document.upload",
        subject=subject,
        resource_type="rag_document",
        resource_id=document_id,
        details={"collection_id": str(collection.id), "format": fmt.value, "size": upload.size},
        request=request,
    )
    return document_view(document)


async def list_documents(
    session: AsyncSession,
    subject: AuthSubject,
    collection_id: uuid.UUID,
    *,
    status: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[DocumentRead]:
    collection = await _collection(session, subject, collection_id, "read")
    documents = await repository.list_documents(
        session, collection.id, status=status, offset=offset, limit=limit
    )
    return [document_view(d) for d in documents]


async def get_document(
    session: AsyncSession, subject: AuthSubject, document_id: uuid.UUID
) -> DocumentRead:
    found = await repository.get_document(
        session, document_id, user_id=subject.user_id, need="read"
    )
    if found is None:
        raise NotFoundError("Document not found", code="document_not_found")
    return document_view(found[0])


async def delete_document(
    session: AsyncSession,
    subject: AuthSubject,
    document_id: uuid.UUID,
    *,
    rag: RagRuntime,
    request: Request | None = None,
) -> None:
    """Delete a document with its vectors and stored file (write access)."""
    found = await repository.get_document(
        session, document_id, user_id=subject.user_id, need="write"
    )
    if found is None:
        if await repository.get_document(
            session, document_id, user_id=subject.user_id, need="read"
        ):
            raise PermissionDeniedError(
                "You have read-only access to this collection", code="read_only_collection"
            )
        raise NotFoundError("Document not found", code="document_not_found")
    document, collection = found
    await rag.store.delete_document(collection.qdrant_collection_name, str(document.id))
    path = rag.document_path(document.stored_path)
    await session.delete(document)
    await session.flush()
    record(
        session,
        action="rag.document.delete",
        subject=subject,
        resource_type="rag_document",
        resource_id=document_id,
        details={"collection_id": str(collection.id)},
        request=request,
    )
    on_commit(session, lambda: path.unlink(missing_ok=True))


# --- search ------------------------------------------------------------------------------


async def search(
    session: AsyncSession,
    subject: AuthSubject,
    collection_id: uuid.UUID,
    query: str,
    *,
    rag: RagRuntime,
    top_k: int = 5,
    mode: SearchMode = "hybrid",
    filters: dict[str, FilterValue] | None = None,
    score_threshold: float | None = None,
) -> list[SearchHit]:
    """The ``top_k`` chunks of a collection the subject can read that best match ``query``.

    ``mode``: ``hybrid`` fuses dense (E5 cosine) and sparse (BM25) rankings with reciprocal
    rank fusion; ``dense`` and ``sparse`` use one of them. Scores are comparable within a mode
    only (cosine, BM25, or RRF), and ``score_threshold`` applies to that score. ``filters``
    match payload fields exactly (``document_id``, ``filename``, ``page``, ``heading``,
    ``format``, ``metadata.<key>``; a list means any of). Only chunks of documents that are
    processed and still exist are returned.
    """
    collection = await _collection(session, subject, collection_id, "read")
    query = query.strip()
    if not query:
        raise BadRequestError("query must not be blank", param="query")
    if not 1 <= top_k <= 50:
        raise BadRequestError("top_k must be between 1 and 50", param="top_k")
    dense = None
    if mode in ("hybrid", "dense"):
        embedder = rag.embedders.get(collection.embedding_model)
        dense = (await embedder.embed_queries([query]))[0]
    sparse = query_vector(query) if mode in ("hybrid", "sparse") else None
    points = await rag.store.search(
        collection.qdrant_collection_name,
        mode=mode,
        limit=top_k,
        dense=dense,
        sparse=sparse,
        filters=filters,
        score_threshold=score_threshold,
    )
    ids = []
    for point in points:
        try:
            ids.append(uuid.UUID(str(point.payload.get("document_id"))))
        except ValueError:
            continue
    live = await repository.searchable_documents(session, collection.id, ids)
    hits = []
    for point in points:
        payload = point.payload
        try:
            document = live.get(uuid.UUID(str(payload.get("document_id"))))
        except ValueError:
            document = None
        if document is None:
            continue
        hits.append(
            SearchHit(
                text=str(payload.get("text", "")),
                score=point.score,
                document_id=document.id,
                filename=document.filename,
                page=payload.get("page"),
                heading=payload.get("heading"),
                chunk_index=int(payload.get("chunk_index", 0)),
                metadata=dict(payload.get("metadata") or {}),
            )
        )
    return hits
