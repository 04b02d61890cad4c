"""Retrieval quality on a small labelled set, over the HTTP API (tests and ``bench/rag``).

The set is two JSONL files: ``passages.jsonl`` (``{"id", "text"}``) and ``queries.jsonl``
(``{"id", "query", "relevant": [passage ids]}``). Each passage is uploaded as its own document
named ``<id>.txt``, so a hit's filename names the passage it came from.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    relevant: frozenset[str]


@dataclass(frozen=True)
class LabelledSet:
    passages: dict[str, str]
    queries: list[Query]


@dataclass
class ModeResult:
    mode: str
    recall_at_k: float
    mrr: float
    latencies_s: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


def load(directory: Path) -> LabelledSet:
    passages = {}
    for line in (directory / "passages.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            passages[item["id"]] = item["text"]
    queries = []
    for line in (directory / "queries.jsonl").read_text().splitlines():
        if line.strip():
            item = json.loads(line)
            queries.append(Query(item["id"], item["query"], frozenset(item["relevant"])))
    return LabelledSet(passages, queries)


async def ingest(
    client: httpx.AsyncClient,
    base: str,
    headers: dict[str, str],
    collection_id: str,
    labelled: LabelledSet,
) -> None:
    ids = []
    for passage_id, text in labelled.passages.items():
        response = await client.post(
            f"{base}/collections/{collection_id}/documents",
            files={"file": (f"{passage_id}.txt", text.encode(), "text/plain")},
            headers=headers,
        )
        response.raise_for_status()
        ids.append(response.json()["id"])
    # One listing per round, not one request per document: polling stays well inside the
    # signed-in user's rate limit however long embedding takes.
    pending = set(ids)
    while pending:
        response = await client.get(
            f"{base}/collections/{collection_id}/documents",
            params={"limit": 1000},
            headers=headers,
        )
        response.raise_for_status()
        for document in response.json():
            if document["id"] not in pending:
                continue
            if document["status"] == "failed":
                raise RuntimeError(f"document {document['id']} failed: {document.get('error')}")
            if document["status"] == "processed":
                pending.discard(document["id"])
        if pending:
            await asyncio.sleep(0.25)


async def evaluate(
    client: httpx.AsyncClient,
    base: str,
    headers: dict[str, str],
    collection_id: str,
    labelled: LabelledSet,
    mode: str,
    k: int = 5,
) -> ModeResult:
    """Recall@k (share of relevant passages found in the top k, averaged over queries) and MRR."""
    recalls, reciprocal_ranks, latencies, misses = [], [], [], []
    for query in labelled.queries:
        started = time.perf_counter()
        response = await client.post(
            f"{base}/collections/{collection_id}/search",
            json={"query": query.text, "top_k": k, "mode": mode},
            headers=headers,
        )
        latencies.append(time.perf_counter() - started)
        response.raise_for_status()
        found = [hit["filename"].removesuffix(".txt") for hit in response.json()["results"]]
        recalls.append(len(query.relevant & set(found)) / len(query.relevant))
        rank = next((i for i, pid in enumerate(found, start=1) if pid in query.relevant), None)
        reciprocal_ranks.append(1 / rank if rank else 0.0)
        if not rank:
            misses.append(query.id)
    count = len(labelled.queries)
    return ModeResult(mode, sum(recalls) / count, sum(reciprocal_ranks) / count, latencies, misses)
