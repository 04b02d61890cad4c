"""Search: modes, filters, thresholds, input checks, and the service other domains call."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from enclava.auth.subject import AuthSubject
from enclava.db import transaction
from enclava.errors import NotFoundError
from enclava.models import User
from enclava.rag import service
from enclava.rag.runtime import get_runtime
from tests.rag import files
from tests.rag.conftest import INTERNAL, PUBLIC, RagApi


async def _library(api: RagApi) -> tuple[dict, dict[str, dict]]:
    collection = await api.create_collection("library")
    uploads = {
        "ops.txt": (b"Restart the Norrland cluster with the runbook before noon.", {"team": "ops"}),
        "hr.txt": (b"Holiday requests go to the people team two weeks ahead.", {"team": "hr"}),
        "both.pdf": (
            files.pdf(["Cover page of the annual report.", "Cluster budget and holiday plan."]),
            {"team": "finance", "year": 2024},
        ),
    }
    documents = {}
    for name, (content, metadata) in uploads.items():
        documents[name] = await api.ingest(
            collection["id"], name, content, metadata=json.dumps(metadata)
        )
        assert documents[name]["status"] == "processed"
        assert documents[name]["metadata"] == metadata
    return collection, documents


async def test_modes_filters_and_limits(actors: Any, rag_api: Any) -> None:
    api = rag_api(await actors.user())
    collection, documents = await _library(api)
    cid = collection["id"]

    dense = await api.search(cid, "how do I ask for vacation days", mode="dense", top_k=3)
    assert dense[0]["filename"] == "hr.txt"
    assert all(0 < hit["score"] <= 1.0001 for hit in dense)
    assert [h["score"] for h in dense] == sorted((h["score"] for h in dense), reverse=True)

    sparse = await api.search(cid, "Norrland", mode="sparse")
    assert [h["filename"] for h in sparse] == ["ops.txt"]
    assert await api.search(cid, "zzzunknownword", mode="sparse") == []

    hybrid = await api.search(cid, "Norrland cluster restart", top_k=2)
    assert len(hybrid) == 2 and hybrid[0]["filename"] == "ops.txt"
    assert hybrid[0]["metadata"] == {"team": "ops"}

    only_hr = await api.search(cid, "cluster", filter={"metadata.team": "hr"})
    assert {h["filename"] for h in only_hr} == {"hr.txt"}
    some = await api.search(
        cid,
        "cluster",
        filter={"document_id": [documents["ops.txt"]["id"], documents["hr.txt"]["id"]]},
        top_k=10,
    )
    assert {h["filename"] for h in some} == {"ops.txt", "hr.txt"}
    page_two = await api.search(cid, "budget", filter={"filename": "both.pdf", "page": 2})
    assert [(h["filename"], h["page"]) for h in page_two] == [("both.pdf", 2)]
    by_year = await api.search(cid, "report", filter={"metadata.year": 2024}, top_k=10)
    assert {h["filename"] for h in by_year} == {"both.pdf"}

    one = await api.search(cid, "cluster", top_k=1)
    assert len(one) == 1
    strict = await api.search(cid, "cluster", mode="dense", score_threshold=0.999)
    assert strict == []


async def test_search_input_is_checked(actors: Any, rag_api: Any, client: Any) -> None:
    owner = await actors.user()
    api = rag_api(owner)
    collection = await api.create_collection()
    empty = await api.search(collection["id"], "anything")
    assert empty == []  # no documents yet: no vectors at all

    for body in (
        {"query": ""},
        {"query": "   "},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 51},
        {"query": "x", "mode": "fuzzy"},
        {"query": "x", "filter": {"text": "secret"}},
        {"query": "x", "filter": {"metadata.bad key": 1}},
        {"query": "x" * 4001},
    ):
        response = await client.post(
            f"{INTERNAL}/collections/{collection['id']}/search", json=body, headers=owner["headers"]
        )
        assert response.status_code == 422, body
    key = await actors.api_key(owner, scopes=["rag.read"])
    public = await client.post(
        f"{PUBLIC}/collections/{collection['id']}/search",
        json={"query": "x", "filter": {"text": "secret"}},
        headers=key["headers"],
    )
    assert public.status_code == 400
    assert public.json()["error"]["param"] == "filter"


async def test_the_search_service_applies_the_callers_access(
    app: Any, actors: Any, rag_api: Any
) -> None:
    """Chatbots call ``service.search`` directly with the subject they act for."""
    alice_actor = await actors.user()
    api = rag_api(alice_actor)
    collection = await api.create_collection()
    await api.ingest(collection["id"], "a.txt", b"The Corvid lighthouse has 212 steps.")
    bob_actor = await actors.user()
    state = app.state.enclava
    rag = get_runtime(state)
    async with transaction(state.session_factory) as session:
        alice = AuthSubject(kind="user", user=await session.get(User, alice_actor["id"]))
        hits = await service.search(
            session, alice, uuid.UUID(collection["id"]), "lighthouse steps", rag=rag, top_k=3
        )
        assert hits[0].filename == "a.txt" and "212" in hits[0].text
        bob = AuthSubject(kind="user", user=await session.get(User, bob_actor["id"]))
        with pytest.raises(NotFoundError):
            await service.search(session, bob, uuid.UUID(collection["id"]), "lighthouse", rag=rag)
