"""Every supported format, generated with real libraries, ends up searchable with its source."""

from __future__ import annotations

from typing import Any

from tests.rag import files

CASES: list[tuple[str, bytes, str, dict[str, Any]]] = [
    (
        "manual.pdf",
        files.pdf(
            [
                "Chapter one explains the installation of the Zephyrine pump.",
                "Chapter two covers maintenance: replace the Quorvex filter every ninety days.",
            ]
        ),
        "Quorvex filter maintenance",
        {"page": 2},
    ),
    (
        "handbook.docx",
        files.docx(
            [
                ("Travel", ["Employees book trains through the Marlowind portal."]),
                ("Expenses", ["Receipts for Veltrano dinners must be scanned within a week."]),
            ],
            table=[["Item", "Limit"], ["Hotel night", "180 EUR"]],
        ),
        "Veltrano receipts",
        {"heading": "Handbook > Expenses"},
    ),
    (
        "prices.xlsx",
        files.xlsx(
            {
                "Fruit": [["Name", "Price"], ["Kumquatrix", 3.5], ["Apple", 1.2]],
                "Tools": [["Name", "Price"], ["Hammer", 12]],
            }
        ),
        "Kumquatrix price",
        {"heading": "Sheet: Fruit"},
    ),
    (
        "deck.pptx",
        files.pptx(
            [
                ("Roadmap", ["Ship the beta in March"]),
                ("Risks", ["The Drovanel supplier may be late", "Budget is tight"]),
            ]
        ),
        "Drovanel supplier risk",
        {"page": 2, "heading": "Risks"},
    ),
    (
        "page.html",
        files.html(
            "Support",
            [("Opening hours", "The Brisket hotline is open from eight to six.")],
        ),
        "Brisket hotline opening hours",
        {"heading": "Support > Opening hours"},
    ),
    (
        "guide.md",
        files.markdown([("Setup", "Run the Flarnish installer as an administrator.")]),
        "Flarnish installer",
        {"heading": "Guide > Setup"},
    ),
    (
        "notes.txt",
        b"First paragraph about nothing.\n\nThe Gorvanta key opens the east door.\n",
        "Gorvanta key",
        {},
    ),
    (
        "staff.csv",
        files.csv_bytes([["name", "role"], ["Ilsabet Quenn", "Trellick engineer"]]),
        "Trellick engineer",
        {},
    ),
    (
        "catalog.json",
        files.json_bytes({"products": [{"sku": "PX-77", "title": "Obrantic lamp"}]}),
        "Obrantic lamp",
        {"heading": "products"},
    ),
    (
        "events.jsonl",
        files.jsonl_bytes([{"event": "login"}, {"event": "Spindrel rollout", "team": "ops"}]),
        "Spindrel rollout",
        {},
    ),
]


async def test_every_format_is_processed_and_searchable_with_its_source(
    actors: Any, rag_api: Any
) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    uploaded = [await alice.upload(collection["id"], name, content) for name, content, *_ in CASES]
    for (filename, _content, query, expected), upload in zip(CASES, uploaded, strict=True):
        document = await alice.wait(upload["id"])
        assert document["status"] == "processed", (filename, document["error"])
        assert document["chunk_count"] >= 1
        assert document["filename"] == filename

        for mode in ("hybrid", "sparse", "dense"):
            results = await alice.search(collection["id"], query, mode=mode, top_k=3)
            assert results and results[0]["filename"] == filename, (filename, mode, results[:1])
            assert results[0]["document_id"] == document["id"]
        top = (await alice.search(collection["id"], query, mode="sparse", top_k=1))[0]
        distinctive = query.split()[0]
        assert distinctive.lower() in top["text"].lower(), (filename, top["text"])
        for key, value in expected.items():
            assert top[key] == value, (filename, key, top)


async def test_pdf_pages_are_counted_and_cited(actors: Any, rag_api: Any) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    pages = [
        f"Page {n} talks about topic number {n} and the Halvorsen item {n}." for n in range(1, 6)
    ]
    document = await alice.ingest(collection["id"], "five.pdf", files.pdf(pages))
    assert document["page_count"] == 5
    assert document["format"] == "pdf"
    assert set(document["timings"]) == {"parse_s", "embed_s", "store_s"}
    hits = await alice.search(collection["id"], "Page 4 topic number 4", mode="sparse", top_k=1)
    assert hits[0]["page"] == 4


async def test_html_scripts_and_styles_are_not_indexed(actors: Any, rag_api: Any) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    await alice.ingest(
        collection["id"], "p.html", files.html("T", [("H", "Visible paragraph text.")])
    )
    assert await alice.search(collection["id"], "do not index me secret", mode="sparse") == []


async def test_format_is_detected_without_an_extension(actors: Any, rag_api: Any) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    docx_bytes = files.docx([("Intro", ["Sniffed from the zip parts, Plombrin."])])
    document = await alice.ingest(collection["id"], "no-extension", docx_bytes)
    assert document["status"] == "processed" and document["format"] == "docx"
    pdf_document = await alice.ingest(
        collection["id"], "scan", files.pdf(["Magic bytes say PDF, Quillon."])
    )
    assert pdf_document["format"] == "pdf"
