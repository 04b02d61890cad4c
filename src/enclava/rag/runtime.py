"""What RAG holds open for the life of the app: the vector store, embedders and its job.

Created once per process in the app lifespan and kept in ``AppState.extras["rag"]``. Routers
get it through the ``Rag`` dependency; other domains (chatbots) through ``get_runtime(state)``.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from enclava.config import Settings
from enclava.db import SessionFactory
from enclava.kit.jobs import JobQueue
from enclava.llm.local_embedder import LocalEmbedder
from enclava.rag.embedder import EmbedderRegistry, LocalE5Embedder
from enclava.rag.vectorstore import VectorStore
from enclava.state import AppState

logger = logging.getLogger(__name__)

PROCESS_DOCUMENT_JOB = "rag.process_document"
LOCAL_EMBEDDER_KEY = "local_embedder"


@dataclass
class RagRuntime:
    settings: Settings
    session_factory: SessionFactory
    store: VectorStore
    embedders: EmbedderRegistry
    jobs: JobQueue

    @property
    def documents_dir(self) -> Path:
        return self.settings.uploads_dir / "rag"

    @property
    def incoming_dir(self) -> Path:
        return self.settings.uploads_dir / ".incoming"

    def collection_dir(self, collection_id: uuid.UUID) -> Path:
        return self.documents_dir / str(collection_id)

    def document_path(self, stored_path: str) -> Path:
        path = (self.settings.uploads_dir / stored_path).resolve()
        # Stored paths are generated, but refuse anything outside the uploads dir regardless.
        if not path.is_relative_to(self.settings.uploads_dir.resolve()):
            raise ValueError("stored path escapes the uploads directory")
        return path

    def trash_dir(self) -> Path:
        return self.settings.uploads_dir / ".trash"


def get_runtime(state: AppState) -> RagRuntime:
    runtime: RagRuntime = state.extras["rag"]
    return runtime


def _runtime(request: Request) -> RagRuntime:
    return get_runtime(request.app.state.enclava)


Rag = Annotated[RagRuntime, Depends(_runtime)]


@asynccontextmanager
async def rag_lifespan(state: AppState) -> AsyncIterator[RagRuntime]:
    """Open the store, register the ingestion job and requeue documents a restart interrupted.

    ``state.extras["jobs"]`` must exist; it is started by the app after this has run.
    """
    from enclava.rag import ingestion

    settings = state.settings
    store = await VectorStore.open(settings)
    # One E5 model per process, shared with any other domain that embeds locally.
    local = state.extras.get(LOCAL_EMBEDDER_KEY)
    owns_local = local is None
    if local is None:
        local = LocalEmbedder()
        state.extras[LOCAL_EMBEDDER_KEY] = local
    runtime = RagRuntime(
        settings=settings,
        session_factory=state.session_factory,
        store=store,
        embedders=EmbedderRegistry(LocalE5Embedder(local)),
        jobs=state.extras["jobs"],
    )
    state.extras["rag"] = runtime
    state.readiness_checks["vector_store"] = store.ping

    async def process(document_id: str) -> None:
        await ingestion.process_document(runtime, document_id)

    runtime.jobs.register(PROCESS_DOCUMENT_JOB, process)
    await ingestion.requeue_unfinished(runtime)
    try:
        yield runtime
    finally:
        if owns_local:
            local.close()
        await store.close()


def move_to_trash(runtime: RagRuntime, path: Path) -> Path | None:
    """Take a directory out of the way at once (a rename); delete it later, off the event loop."""
    if not path.exists():
        return None
    trash = runtime.trash_dir()
    trash.mkdir(parents=True, exist_ok=True)
    target = trash / uuid.uuid4().hex
    path.rename(target)
    return target


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
