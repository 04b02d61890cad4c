"""Retrieval quality on the labelled set in tests/rag/data (figures in docs/benchmarks.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from enclava.testing import rag_quality
from tests.rag.conftest import INTERNAL

DATA = Path(__file__).parent / "data"


async def test_hybrid_search_finds_the_labelled_passages(
    actors: Any, rag_api: Any, client: Any
) -> None:
    labelled = rag_quality.load(DATA)
    assert len(labelled.passages) >= 30 and len(labelled.queries) >= 20
    user = await actors.user()
    collection = await rag_api(user).create_collection("quality")
    await rag_quality.ingest(client, INTERNAL, user["headers"], collection["id"], labelled)

    results = {
        mode: await rag_quality.evaluate(
            client, INTERNAL, user["headers"], collection["id"], labelled, mode
        )
        for mode in ("hybrid", "dense", "sparse")
    }
    summary = {m: (round(r.recall_at_k, 3), r.misses) for m, r in results.items()}
    # Lexical and semantic retrieval miss different queries; fusing them misses fewer.
    assert results["hybrid"].recall_at_k >= 0.9, summary
    best_single = max(results["dense"].recall_at_k, results["sparse"].recall_at_k)
    assert results["hybrid"].recall_at_k >= best_single - 0.05, summary
    assert results["sparse"].recall_at_k < 1.0, summary  # paraphrases defeat pure BM25
    # Exact identifiers are found by the lexical half.
    assert not {"q04", "q07", "q19"} & set(results["sparse"].misses), summary
