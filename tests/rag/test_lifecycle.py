"""Collections and documents over time: status events, deletion, restarts."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import numpy as np
from sqlalchemy import update

from enclava.config import Settings
from enclava.models import RagDocument
from tests.rag.conftest import INTERNAL, RagApi, running_app


def _qdrant_name(collection: dict[str, Any]) -> str:
    return "enclava_" + collection["id"].replace("-", "")


class GatedEmbedder:
    """Wraps the real embedder and holds every call until the gate opens (or forever)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()
        self.calls = 0

    @property
    def model_id(self) -> str:
        return str(self.inner.model_id)

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        self.calls += 1
        self.entered.set()
        await self.gate.wait()
        return await self.inner.embed_passages(texts)

    async def embed_queries(self, texts: list[str]) -> np.ndarray:
        return await self.inner.embed_queries(texts)


def _gate(app: Any) -> GatedEmbedder:
    registry = app.state.enclava.extras["rag"].embedders
    gated = GatedEmbedder(registry.get(registry.default_model_id))
    registry.register(gated)
    return gated


async def _row(app: Any, document_id: str) -> RagDocument:
    async with app.state.enclava.session_factory() as session:
        row = await session.get(RagDocument, uuid.UUID(document_id))
        assert row is not None
        return row


async def test_a_restart_during_processing_loses_no_document(settings: Settings) -> None:
    texts = [
        f"Report {n}: the Ellingham turbine number {n} passed inspection.\n\n" * 3 for n in range(3)
    ]
    async with running_app(settings) as (app, client, actors):
        user = await actors.user()
        api = RagApi(client, user["headers"])
        collection = await api.create_collection()
        gated = _gate(app)
        documents = [
            await api.upload(collection["id"], f"report-{n}.txt", text.encode())
            for n, text in enumerate(texts)
        ]
        await asyncio.wait_for(gated.entered.wait(), 30)
        # Both workers get stuck mid-embedding; the third document waits its turn.
        for _ in range(600):
            statuses = [(await api.document(d["id"])).json()["status"] for d in documents]
            if gated.calls == 2 and sorted(statuses) == ["processing", "processing", "queued"]:
                break
            await asyncio.sleep(0.05)
        assert sorted(statuses) == ["processing", "processing", "queued"]
        assert gated.calls == 2
    # The app is gone while it was working: rows are left as they were.

    async with running_app(settings) as (app, client, _):
        api = RagApi(client, user["headers"])
        store = app.state.enclava.extras["rag"].store
        for document in documents:
            final = await api.wait(document["id"])
            assert final["status"] == "processed", final["error"]
            # Processed once: no chunk stored twice by the interrupted and the resumed run.
            assert (
                await store.count(_qdrant_name(collection), document["id"]) == final["chunk_count"]
            )
        hits = await api.search(
            collection["id"], "Ellingham turbine number 2", mode="sparse", top_k=1
        )
        assert hits[0]["filename"] == "report-2.txt"
        attempts = sorted([(await _row(app, d["id"])).attempts for d in documents])
        assert attempts == [1, 2, 2]


async def test_a_document_that_keeps_interrupting_its_worker_is_given_up(
    settings: Settings,
) -> None:
    async with running_app(settings) as (app, client, actors):
        user = await actors.user()
        api = RagApi(client, user["headers"])
        collection = await api.create_collection()
        gated = _gate(app)
        document = await api.upload(collection["id"], "poison.txt", b"Some text.")
        await asyncio.wait_for(gated.entered.wait(), 30)
        async with app.state.enclava.session_factory() as session:
            await session.execute(
                update(RagDocument)
                .where(RagDocument.id == uuid.UUID(document["id"]))
                .values(attempts=3)
            )
            await session.commit()
    async with running_app(settings) as (_app, client, _):
        final = await RagApi(client, user["headers"]).wait(document["id"])
        assert final["status"] == "failed"
        assert "interrupted 3 times" in final["error"]


async def test_status_events_stream_until_processed(actors: Any, rag_api: Any, client: Any) -> None:
    user = await actors.user()
    api = rag_api(user)
    collection = await api.create_collection()
    document = await api.upload(
        collection["id"], "a.txt", b"Paragraph one.\n\nParagraph two about Kestrel."
    )
    response = await client.get(
        f"{INTERNAL}/documents/{document['id']}/events", headers=user["headers"]
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [
        json.loads(line.removeprefix("data: "))
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[-1]["status"] == "processed"
    assert events[-1]["chunk_count"] >= 1
    assert all(e["id"] == document["id"] for e in events)
    progress = [e["progress"] for e in events]
    assert progress == sorted(progress)

    # A finished document answers with one event and closes.
    again = await client.get(
        f"{INTERNAL}/documents/{document['id']}/events", headers=user["headers"]
    )
    assert again.text.count("event: status") == 1


async def test_deleting_a_document_removes_its_vectors_and_file(
    app: Any, actors: Any, rag_api: Any, client: Any, settings: Settings
) -> None:
    user = await actors.user()
    api = rag_api(user)
    collection = await api.create_collection()
    keep = await api.ingest(collection["id"], "keep.txt", b"Keep the Farrowdale notes.")
    drop = await api.ingest(collection["id"], "drop.txt", b"Drop the Harrowgate notes.")
    store = app.state.enclava.extras["rag"].store
    assert await store.count(_qdrant_name(collection), drop["id"]) == drop["chunk_count"]

    response = await client.delete(f"{INTERNAL}/documents/{drop['id']}", headers=user["headers"])
    assert response.status_code == 204
    assert await store.count(_qdrant_name(collection), drop["id"]) == 0
    assert not (settings.uploads_dir / "rag" / collection["id"] / drop["id"]).exists()
    assert (await api.document(drop["id"])).status_code == 404
    assert await api.search(collection["id"], "Harrowgate", mode="sparse") == []
    assert (await api.search(collection["id"], "Farrowdale", mode="sparse"))[0][
        "document_id"
    ] == keep["id"]
    listed = await client.get(
        f"{INTERNAL}/collections/{collection['id']}/documents", headers=user["headers"]
    )
    assert [d["id"] for d in listed.json()] == [keep["id"]]

    # The same content can come back after deletion.
    again = await api.upload(collection["id"], "drop.txt", b"Drop the Harrowgate notes.")
    assert again["duplicate"] is False


async def test_deleting_a_collection_removes_documents_vectors_and_files(
    app: Any, actors: Any, rag_api: Any, client: Any, settings: Settings
) -> None:
    user = await actors.user()
    api = rag_api(user)
    collection = await api.create_collection()
    document = await api.ingest(collection["id"], "a.txt", b"Notes on the Wexley archive.")
    store = app.state.enclava.extras["rag"].store
    assert await store.exists(_qdrant_name(collection))

    response = await client.delete(
        f"{INTERNAL}/collections/{collection['id']}", headers=user["headers"]
    )
    assert response.status_code == 204
    assert not await store.exists(_qdrant_name(collection))
    assert not (settings.uploads_dir / "rag" / collection["id"]).exists()
    assert (await api.document(document["id"])).status_code == 404
    assert (
        await client.get(f"{INTERNAL}/collections/{collection['id']}", headers=user["headers"])
    ).status_code == 404
    # The name is free again.
    assert (await api.create_collection(collection["name"]))["document_count"] == 0


async def test_deleting_a_document_while_it_is_processing_leaves_no_vectors(
    app: Any, actors: Any, rag_api: Any, client: Any
) -> None:
    user = await actors.user()
    api = rag_api(user)
    collection = await api.create_collection()
    gated = _gate(app)
    document = await api.upload(collection["id"], "a.txt", b"Text about the Ivorsen dam.")
    await asyncio.wait_for(gated.entered.wait(), 30)
    response = await client.delete(
        f"{INTERNAL}/documents/{document['id']}", headers=user["headers"]
    )
    assert response.status_code == 204
    gated.gate.set()
    await app.state.enclava.extras["jobs"].join()
    store = app.state.enclava.extras["rag"].store
    assert await store.count(_qdrant_name(collection), document["id"]) == 0


async def test_collection_rules(actors: Any, rag_api: Any, client: Any) -> None:
    user = await actors.user()
    api = rag_api(user)
    created = await api.create_collection(
        "  Policies ", description="HR", chunk_size=500, chunk_overlap=50
    )
    assert created["name"] == "Policies" and created["access"] == "owner"
    assert created["embedding_model"] == "multilingual-e5-small"
    assert (created["chunk_size"], created["chunk_overlap"]) == (500, 50)

    duplicate = await client.post(
        f"{INTERNAL}/collections", json={"name": "Policies"}, headers=user["headers"]
    )
    assert duplicate.status_code == 409
    unknown_model = await client.post(
        f"{INTERNAL}/collections",
        json={"name": "x", "embedding_model": "nope"},
        headers=user["headers"],
    )
    assert unknown_model.status_code == 400
    for bad in (
        {"name": ""},
        {"name": "x", "chunk_size": 50},
        {"name": "x", "chunk_size": 400, "chunk_overlap": 300},
    ):
        response = await client.post(f"{INTERNAL}/collections", json=bad, headers=user["headers"])
        assert response.status_code == 422, bad

    await api.ingest(created["id"], "a.txt", b"one")
    fetched = await client.get(f"{INTERNAL}/collections/{created['id']}", headers=user["headers"])
    assert fetched.json()["document_count"] == 1
    failed_only = await client.get(
        f"{INTERNAL}/collections/{created['id']}/documents?status=failed", headers=user["headers"]
    )
    assert failed_only.json() == []


async def test_readiness_includes_the_vector_store(client: Any) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json()["checks"]["vector_store"] == "ok"
