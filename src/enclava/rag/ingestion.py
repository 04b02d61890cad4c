"""The ingestion job: parse → chunk → embed → store, with status persisted at every step.

A document goes ``queued → processing → processed | failed``. The job takes a document id,
claims the row (so a finished or deleted document is skipped), and commits progress in short
transactions; nothing is held open while parsing or embedding. It is idempotent: a run that a
restart interrupted leaves the row ``processing``; at the next start the row is queued again,
the partial vectors are deleted and the document is processed from the start. A document that
keeps interrupting its worker is failed after ``MAX_ATTEMPTS``, so it cannot block the queue.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import update

from enclava.db import transaction
from enclava.kit.time import utcnow
from enclava.models import RagCollection, RagDocument
from enclava.rag import repository
from enclava.rag.chunking import Chunk, chunk_blocks
from enclava.rag.embedder import UnknownEmbeddingModelError
from enclava.rag.parsing import DocumentError, DocumentFormat, parse_file
from enclava.rag.runtime import PROCESS_DOCUMENT_JOB, RagRuntime
from enclava.rag.sparse import SparseVector, document_vector
from enclava.rag.vectorstore import ChunkPoint

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
MAX_CHUNKS_PER_DOCUMENT = 50_000
# One embedder call per batch; searches share the embedder thread, so batches stay short.
EMBED_BATCH = 32
# Share of the progress bar given to parsing; embedding and storing fill the rest.
_PARSED_PROGRESS = 0.1


@dataclass(frozen=True, slots=True)
class _Work:
    document_id: uuid.UUID
    collection_id: uuid.UUID
    stored_path: str
    filename: str
    format: DocumentFormat
    attempts: int
    qdrant_collection: str
    embedding_model: str
    chunk_size: int
    chunk_overlap: int
    user_metadata: dict[str, Any]


class _Gone(Exception):
    """The document was deleted (or finished elsewhere) while this job worked on it."""


async def requeue_unfinished(runtime: RagRuntime) -> int:
    async with transaction(runtime.session_factory) as session:
        ids = await repository.unfinished_document_ids(session)
    for document_id in ids:
        await runtime.jobs.enqueue(PROCESS_DOCUMENT_JOB, str(document_id))
    if ids:
        logger.info("requeued unfinished documents", extra={"count": len(ids)})
    return len(ids)


async def process_document(runtime: RagRuntime, document_id: str) -> None:
    work = await _claim(runtime, uuid.UUID(document_id))
    if work is None:
        return
    if work.attempts > MAX_ATTEMPTS:
        await _fail(
            runtime,
            work,
            f"Processing was interrupted {MAX_ATTEMPTS} times; the document was given up on",
        )
        return
    try:
        chunk_count, page_count, timings = await _ingest(runtime, work)
    except DocumentError as exc:
        cause = exc.__cause__
        logger.info(
            "document rejected",
            extra={
                "document_id": document_id,
                "cause": f"{type(cause).__name__}: {cause}"[:300] if cause else None,
            },
            exc_info=cause if logger.isEnabledFor(logging.DEBUG) else None,
        )
        await _fail(runtime, work, str(exc))
        return
    except _Gone:
        await _discard_vectors(runtime, work)
        return
    except asyncio.CancelledError:
        raise  # shutting down: the row stays "processing" and is requeued at the next start
    except Exception:
        logger.exception("document processing failed", extra={"document_id": document_id})
        await _fail(runtime, work, "Processing failed because of an internal error")
        return
    await _finish(runtime, work, chunk_count, page_count, timings)


async def _claim(runtime: RagRuntime, document_id: uuid.UUID) -> _Work | None:
    async with transaction(runtime.session_factory) as session:
        if not await repository.claim_document(session, document_id, utcnow()):
            return None
        document = await session.get(RagDocument, document_id)
        collection = await session.get(RagCollection, document.collection_id) if document else None
        if document is None or collection is None:
            return None
        metadata = document.metadata_ or {}
        return _Work(
            document_id=document.id,
            collection_id=collection.id,
            stored_path=document.stored_path,
            filename=document.filename,
            format=DocumentFormat(metadata.get("format", DocumentFormat.TEXT)),
            attempts=document.attempts,
            qdrant_collection=collection.qdrant_collection_name,
            embedding_model=collection.embedding_model,
            chunk_size=collection.chunk_size,
            chunk_overlap=collection.chunk_overlap,
            user_metadata=dict(metadata.get("user") or {}),
        )


async def _ingest(runtime: RagRuntime, work: _Work) -> tuple[int, int | None, dict[str, float]]:
    timings = {"parse_s": 0.0, "embed_s": 0.0, "store_s": 0.0}
    path = runtime.document_path(work.stored_path)
    if not path.exists():
        raise DocumentError("The stored file is missing; upload the document again")

    started = time.perf_counter()
    parsed = await asyncio.to_thread(parse_file, path, work.format)
    chunks = await asyncio.to_thread(
        chunk_blocks, parsed.blocks, size=work.chunk_size, overlap=work.chunk_overlap
    )
    timings["parse_s"] = time.perf_counter() - started
    if not chunks:
        hint = (
            " (a scanned PDF without a text layer needs OCR first)"
            if work.format is DocumentFormat.PDF
            else ""
        )
        raise DocumentError(f"No text could be extracted from the document{hint}")
    if len(chunks) > MAX_CHUNKS_PER_DOCUMENT:
        raise DocumentError(
            f"The document yields {len(chunks)} chunks, more than the limit of "
            f"{MAX_CHUNKS_PER_DOCUMENT}; split it into smaller files"
        )
    try:
        embedder = runtime.embedders.get(work.embedding_model)
    except UnknownEmbeddingModelError:
        raise DocumentError(f"The embedding model {work.embedding_model!r} is not available")
    await _progress(runtime, work, _PARSED_PROGRESS)

    # A previous, interrupted run may have stored part of this document.
    await runtime.store.delete_document(work.qdrant_collection, str(work.document_id))
    collection_ready = False
    for start in range(0, len(chunks), EMBED_BATCH):
        batch = chunks[start : start + EMBED_BATCH]
        texts = [chunk.embedding_text() for chunk in batch]
        began = time.perf_counter()
        dense = await embedder.embed_passages(texts)
        sparse = await asyncio.to_thread(_sparse_vectors, texts, work.chunk_size)
        timings["embed_s"] += time.perf_counter() - began

        began = time.perf_counter()
        if not collection_ready:
            await runtime.store.ensure_collection(work.qdrant_collection, int(dense.shape[1]))
            collection_ready = True
        points = [
            ChunkPoint(
                document_id=str(work.document_id),
                index=chunk.index,
                dense=dense[row],
                sparse=sparse[row],
                payload=_payload(work, chunk),
            )
            for row, chunk in enumerate(batch)
        ]
        await runtime.store.upsert(work.qdrant_collection, points)
        timings["store_s"] += time.perf_counter() - began
        done = start + len(batch)
        await _progress(
            runtime, work, _PARSED_PROGRESS + (1 - _PARSED_PROGRESS) * done / len(chunks)
        )
    return len(chunks), parsed.page_count, {k: round(v, 4) for k, v in timings.items()}


def _sparse_vectors(texts: list[str], chunk_size: int) -> list[SparseVector]:
    return [document_vector(text, chunk_size=chunk_size) for text in texts]


def _payload(work: _Work, chunk: Chunk) -> dict[str, Any]:
    return {
        "text": chunk.text,
        "document_id": str(work.document_id),
        "collection_id": str(work.collection_id),
        "filename": work.filename,
        "format": work.format.value,
        "page": chunk.page,
        "heading": chunk.heading,
        "chunk_index": chunk.index,
        "metadata": work.user_metadata,
    }


async def _progress(runtime: RagRuntime, work: _Work, progress: float) -> None:
    async with transaction(runtime.session_factory) as session:
        alive = await repository.set_progress(
            session, work.document_id, min(progress, 0.99), utcnow()
        )
    if not alive:
        raise _Gone()


async def _finish(
    runtime: RagRuntime,
    work: _Work,
    chunk_count: int,
    page_count: int | None,
    timings: dict[str, float],
) -> None:
    async with transaction(runtime.session_factory) as session:
        document = await session.get(RagDocument, work.document_id)
        if document is None or document.status != "processing":
            alive = False
        else:
            alive = True
            now = utcnow()
            document.status = "processed"
            document.progress = 1.0
            document.chunk_count = chunk_count
            document.page_count = page_count
            document.processed_at = now
            document.updated_at = now
            document.metadata_ = {**(document.metadata_ or {}), "timings": timings}
    if not alive:
        await _discard_vectors(runtime, work)
        return
    logger.info(
        "document processed",
        extra={"document_id": str(work.document_id), "chunks": chunk_count, **timings},
    )


async def _fail(runtime: RagRuntime, work: _Work, reason: str) -> None:
    async with transaction(runtime.session_factory) as session:
        await session.execute(
            update(RagDocument)
            .where(RagDocument.id == work.document_id, RagDocument.status == "processing")
            .values(status="failed", error=reason[:1000], progress=0.0, updated_at=utcnow())
        )
    try:
        await runtime.store.delete_document(work.qdrant_collection, str(work.document_id))
    except Exception:
        logger.exception("could not remove vectors of a failed document")
    logger.info("document failed", extra={"document_id": str(work.document_id)})


async def _discard_vectors(runtime: RagRuntime, work: _Work) -> None:
    """Undo what this run stored for a document that was deleted meanwhile."""
    async with transaction(runtime.session_factory) as session:
        collection_alive = await session.get(RagCollection, work.collection_id) is not None
    if collection_alive:
        await runtime.store.delete_document(work.qdrant_collection, str(work.document_id))
    else:
        await runtime.store.drop_collection(work.qdrant_collection)
