"""RAG benchmark: ingestion throughput and where its time goes, search latency, retrieval quality.

Runs the real app in-process on the embedded defaults (SQLite, Qdrant local mode, the bundled
E5 model) in a temporary data dir, through the HTTP API:

1. ingestion: generated PDFs (text pages) and DOCX files are uploaded and processed; pages/s and
   chunks/s over the wall time, and the share of worker time spent parsing, embedding (dense and
   BM25 vectors) and storing, from the timings each document records;
2. search latency p50/p99 per mode over the ingested corpus (query embedding included);
3. recall@5 and MRR per mode on the labelled set in tests/rag/data.

``python -m bench.rag [--pdfs N] [--pages P] [--queries Q]``
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from enclava.app import create_app
from enclava.config import Settings
from enclava.migrations import runner
from enclava.testing import rag_quality

DATA = Path(__file__).resolve().parents[2] / "tests" / "rag" / "data"
BASE = "/api-internal/v1/rag"
PASSWORD = "benchmark password 123"

_WORDS = [
    "system", "data", "customer", "invoice", "network", "policy", "backup", "server",
    "contract", "budget", "review", "team", "project", "release", "storage", "access",
    "request", "approval", "report", "security", "incident", "schedule", "meeting", "travel",
    "expense", "account", "support", "service", "quality", "process", "document", "training",
]  # fmt: skip


def _sentence(rng: random.Random) -> str:
    words = rng.choices(_WORDS, k=rng.randint(8, 16))
    return " ".join(words).capitalize() + "."


def _page_text(rng: random.Random, chars: int = 1800) -> str:
    parts: list[str] = []
    while sum(len(p) for p in parts) < chars:
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(3, 6)))
        parts.append(paragraph)
    return "\n\n".join(parts)


def _pdf(rng: random.Random, pages: int) -> bytes:
    from fpdf import FPDF

    document = FPDF()
    document.set_font("helvetica", size=10)
    for _ in range(pages):
        document.add_page()
        document.multi_cell(0, 5, _page_text(rng))
    return bytes(document.output())


def _docx(rng: random.Random, sections: int) -> bytes:
    import docx

    document = docx.Document()
    for number in range(sections):
        document.add_heading(f"Section {number + 1}", level=1)
        for paragraph in _page_text(rng).split("\n\n"):
            document.add_paragraph(paragraph)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


async def _login(app: Any, client: httpx.AsyncClient) -> dict[str, str]:
    from enclava.auth import service
    from enclava.db import transaction

    async with transaction(app.state.enclava.session_factory) as session:
        await service.create_user(session, email="bench@example.com", password=PASSWORD)
    response = await client.post(
        "/api-internal/v1/auth/login", json={"email": "bench@example.com", "password": PASSWORD}
    )
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def _wait_all(
    client: httpx.AsyncClient, headers: dict[str, str], ids: list[str]
) -> list[dict]:
    documents = []
    for document_id in ids:
        while True:
            response = await client.get(f"{BASE}/documents/{document_id}", headers=headers)
            body = response.json()
            if body["status"] in ("processed", "failed"):
                documents.append(body)
                break
            await asyncio.sleep(0.05)
    return documents


def _settings(data_dir: Path) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        data_dir=data_dir,
        environment="test",
        secret_key="bench-secret-key-that-is-long-enough-0123456789",
        encryption_key="bench-encryption-key-that-is-long-enough-01234",
        log_level="WARNING",
    )


async def _run(
    settings: Settings, pdfs: int, pages: int, docx_files: int, queries: int
) -> dict[str, Any]:
    rng = random.Random(20261126)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://bench", timeout=600
        ) as client:
            headers = await _login(app, client)
            files = [(f"report-{n}.pdf", _pdf(rng, pages)) for n in range(pdfs)]
            files += [(f"notes-{n}.docx", _docx(rng, pages)) for n in range(docx_files)]

            collection = (
                await client.post(f"{BASE}/collections", json={"name": "corpus"}, headers=headers)
            ).json()
            started = time.perf_counter()
            ids = []
            for name, content in files:
                response = await client.post(
                    f"{BASE}/collections/{collection['id']}/documents",
                    files={"file": (name, content)},
                    headers=headers,
                )
                response.raise_for_status()
                ids.append(response.json()["id"])
            documents = await _wait_all(client, headers, ids)
            wall = time.perf_counter() - started
            failed = [d for d in documents if d["status"] != "processed"]
            if failed:
                raise RuntimeError(f"{len(failed)} documents failed: {failed[0]['error']}")
            pdf_pages = sum(d["page_count"] or 0 for d in documents if d["format"] == "pdf")
            chunks = sum(d["chunk_count"] for d in documents)
            timings = {
                key: sum(d["timings"][key] for d in documents)
                for key in ("parse_s", "embed_s", "store_s")
            }
            worker_time = sum(timings.values())

            latencies: dict[str, list[float]] = {}
            query_texts = [_sentence(rng)[:80] for _ in range(queries)]
            for mode in ("hybrid", "dense", "sparse"):
                samples = []
                for text in query_texts:
                    began = time.perf_counter()
                    response = await client.post(
                        f"{BASE}/collections/{collection['id']}/search",
                        json={"query": text, "top_k": 5, "mode": mode},
                        headers=headers,
                    )
                    samples.append(time.perf_counter() - began)
                    response.raise_for_status()
                latencies[mode] = samples

            labelled = rag_quality.load(DATA)
            quality_collection = (
                await client.post(f"{BASE}/collections", json={"name": "quality"}, headers=headers)
            ).json()
            await rag_quality.ingest(client, BASE, headers, quality_collection["id"], labelled)
            quality = {
                mode: await rag_quality.evaluate(
                    client, BASE, headers, quality_collection["id"], labelled, mode
                )
                for mode in ("hybrid", "dense", "sparse")
            }
    return {
        "documents": len(documents),
        "pdf_pages": pdf_pages,
        # A DOCX has no pages; each generated section holds about one PDF page of text.
        "pages_total": pdf_pages + docx_files * pages,
        "chunks": chunks,
        "wall_s": wall,
        "timings": timings,
        "worker_s": worker_time,
        "latencies": latencies,
        "quality": quality,
        "labelled": (len(labelled.passages), len(labelled.queries)),
    }


def _report(result: dict[str, Any]) -> None:
    wall = result["wall_s"]
    print(
        f"ingestion: {result['documents']} documents, {result['pages_total']} pages "
        f"({result['pdf_pages']} PDF pages), {result['chunks']} chunks in {wall:.1f} s"
    )
    print(
        f"  throughput: {result['pages_total'] / wall:.1f} pages/s, "
        f"{result['chunks'] / wall:.1f} chunks/s"
    )
    worker = result["worker_s"] or 1.0
    shares = ", ".join(
        f"{key.removesuffix('_s')} {100 * value / worker:.1f}%"
        for key, value in result["timings"].items()
    )
    print(f"  worker time: {shares}")
    print("search latency (top_k=5, query embedding included):")
    print("| mode | p50 ms | p99 ms |")
    print("| --- | ---: | ---: |")
    for mode, samples in result["latencies"].items():
        p50 = statistics.median(samples) * 1000
        p99 = _percentile(samples, 0.99) * 1000
        print(f"| {mode} | {p50:.1f} | {p99:.1f} |")
    passages, queries = result["labelled"]
    print(f"retrieval quality ({passages} passages, {queries} queries, k=5):")
    print("| mode | recall@5 | MRR | misses |")
    print("| --- | ---: | ---: | --- |")
    for mode, quality in result["quality"].items():
        print(
            f"| {mode} | {quality.recall_at_k:.3f} | {quality.mrr:.3f} | "
            f"{', '.join(quality.misses) or '-'} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.rag", description=__doc__)
    parser.add_argument("--pdfs", type=int, default=20, help="generated PDFs")
    parser.add_argument("--pages", type=int, default=5, help="pages per PDF and sections per DOCX")
    parser.add_argument("--docx", type=int, default=4, help="generated DOCX files")
    parser.add_argument("--queries", type=int, default=100, help="search samples per mode")
    args = parser.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="enclava-bench-rag-") as tmp:
        settings = _settings(Path(tmp))
        runner.upgrade(settings)
        result = asyncio.run(_run(settings, args.pdfs, args.pages, args.docx, args.queries))
    _report(result)
