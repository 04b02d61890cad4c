"""Uploads: limits, streaming, hostile names, broken files, duplicates."""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from enclava.config import Settings
from enclava.models import RagDocument
from tests.rag import files
from tests.rag.conftest import INTERNAL, RagApi, multipart_body, running_app

MiB = 1024 * 1024


def _stored_files(settings: Settings) -> list[Path]:
    root = settings.uploads_dir
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def _count_documents(app: Any) -> int:
    async with app.state.enclava.session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(RagDocument)) or 0)


# --- size limit and streaming --------------------------------------------------------------


async def _streamed_body(
    boundary: bytes, filename: bytes, total: int, tail: bytes
) -> AsyncIterator[bytes]:
    yield (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: text/plain\r\n\r\n"
    )
    # Mostly blank lines: a realistic 50 MB upload that parses to a little text.
    line = b" " * 1023 + b"\n"
    block = line * 1024
    sent = 0
    while sent + len(block) <= total - len(tail):
        yield block
        sent += len(block)
    yield b" " * (total - len(tail) - sent)
    yield tail
    yield b"\r\n--" + boundary + b"--\r\n"


@pytest.mark.slow
async def test_a_50_mb_upload_is_streamed_to_disk_not_held_in_memory(
    settings: Settings,
) -> None:
    size = 50 * MiB
    tail = b"\n\nThe Vandermeer clause sits at the very end of this large file.\n"
    boundary = b"enclava-large-upload-boundary"
    settings = settings.model_copy(update={"max_upload_bytes": 60 * MiB})
    async with running_app(settings) as (_app, client, actors):
        alice = RagApi(client, (await actors.user())["headers"])
        collection = await alice.create_collection()
        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            before, _ = tracemalloc.get_traced_memory()
            response = await client.post(
                f"{INTERNAL}/collections/{collection['id']}/documents",
                content=_streamed_body(boundary, b"big.txt", size, tail),
                headers={
                    **alice.headers,
                    "Content-Type": "multipart/form-data; boundary=" + boundary.decode(),
                },
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert response.status_code == 202, response.text
        # The whole request, client side included, stayed far below the file's size.
        assert peak - before < 12 * MiB, f"peak grew by {(peak - before) / MiB:.1f} MiB"
        document = response.json()
        assert document["size_bytes"] == size
        stored = [p for p in _stored_files(settings) if p.stat().st_size == size]
        assert len(stored) == 1
        processed = await alice.wait(document["id"])
        assert processed["status"] == "processed", processed["error"]
        hits = await alice.search(collection["id"], "Vandermeer clause", mode="sparse")
        assert hits and "Vandermeer" in hits[0]["text"]


async def test_over_limit_upload_is_refused_with_413_and_leaves_nothing(
    settings: Settings,
) -> None:
    settings = settings.model_copy(update={"max_upload_bytes": MiB})
    async with running_app(settings) as (app, client, actors):
        alice = RagApi(client, (await actors.user())["headers"])
        collection = await alice.create_collection()

        # Content-Length says it all: refused before the body is read.
        declared = await alice.upload_raw(collection["id"], "big.txt", b"a" * (2 * MiB))
        assert declared.status_code == 413
        assert declared.json()["code"] == "file_too_large"

        # No Content-Length (chunked): cut off once the counted bytes pass the limit.
        async def chunks() -> AsyncIterator[bytes]:
            body, _ = multipart_body(b"big.txt", b"b" * (3 * MiB))
            for start in range(0, len(body), 64 * 1024):
                yield body[start : start + 64 * 1024]

        _, headers = multipart_body(b"x", b"")
        streamed = await client.post(
            f"{INTERNAL}/collections/{collection['id']}/documents",
            content=chunks(),
            headers={**alice.headers, **headers},
        )
        assert streamed.status_code == 413
        assert _stored_files(settings) == []
        assert await _count_documents(app) == 0

        # Exactly at the limit is fine.
        at_limit = await alice.upload_raw(collection["id"], "ok.txt", b"word " * (MiB // 5))
        assert at_limit.status_code == 202, at_limit.text


async def test_public_api_413_has_the_openai_error_shape(settings: Settings) -> None:
    settings = settings.model_copy(update={"max_upload_bytes": 1000})
    async with running_app(settings) as (_app, client, actors):
        owner = await actors.user()
        key = await actors.api_key(owner, scopes=["rag.read", "rag.write"])
        api = RagApi(client, key["headers"], "/api/v1/rag")
        collection = await api.create_collection()
        response = await api.upload_raw(collection["id"], "a.txt", b"x" * 5000)
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "file_too_large"


# --- filenames -----------------------------------------------------------------------------


HOSTILE_NAMES = [
    (b"../../etc/passwd", "passwd"),
    (b"..\\..\\windows\\system32\\evil.txt", "evil.txt"),
    (b"evil\x00name.txt", "evilname.txt"),
    (b"tab\there.txt", "tabhere.txt"),
    ("Ünïcødé 文件 \u202eexe.txt".encode(), "Ünïcødé 文件 exe.txt"),
    (b"..", "document"),
    (b"a" * 1000 + b".txt", "a" * 196 + ".txt"),
]


async def test_hostile_filenames_are_cleaned_and_never_used_as_paths(
    client: Any, actors: Any, settings: Settings
) -> None:
    user = await actors.user()
    alice = RagApi(client, user["headers"])
    collection = await alice.create_collection()
    documents = []
    for number, (raw_name, expected) in enumerate(HOSTILE_NAMES):
        content = f"Harmless words about the Pellucid valve number {number}.\n".encode()
        body, headers = multipart_body(raw_name, content)
        response = await client.post(
            f"{INTERNAL}/collections/{collection['id']}/documents",
            content=body,
            headers={**user["headers"], **headers},
        )
        assert response.status_code == 202, (raw_name, response.text)
        document = response.json()
        assert document["filename"] == expected, raw_name
        documents.append(document)

    stored = _stored_files(settings)
    assert sorted(p.name for p in stored) == sorted(d["id"] for d in documents)
    assert all(p.resolve().is_relative_to(settings.uploads_dir.resolve()) for p in stored)
    # Nothing was written next to the data dir or up the tree.
    assert sorted(os.listdir(settings.data_dir.parent)) == ["data"]
    for number, document in enumerate(documents):
        processed = await alice.wait(document["id"])
        assert processed["status"] == "processed", processed["error"]
        hits = await alice.search(
            collection["id"],
            "Pellucid valve",
            mode="sparse",
            filter={"document_id": document["id"]},
        )
        assert hits[0]["filename"] == document["filename"]
        assert f"number {number}" in hits[0]["text"]


# --- broken and unsupported files ----------------------------------------------------------

BROKEN: list[tuple[str, bytes, str]] = [
    ("garbage.pdf", b"%PDF-1.7\n" + os.urandom(3000), "damaged"),
    ("not-really.pdf", b"Just some text pretending to be a PDF.", "not a PDF"),
    ("locked.pdf", files.pdf(["Top secret"], user_password="hunter2"), "password-protected"),
    ("cut.docx", files.corrupt_zip_named("docx"), "damaged"),
    ("cut.xlsx", files.corrupt_zip_named("xlsx"), "damaged"),
    ("cut.pptx", files.corrupt_zip_named("pptx"), "damaged"),
    ("protected.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 2000, "password-protected"),
    ("wrong.xlsx", files.zip_without_office_parts(), "damaged"),
    ("bad.json", b'{"a": [1, 2,,]}', "not valid JSON"),
    ("bad.jsonl", b'{"ok": 1}\n{"broken": \n', "Line 2"),
    ("binary.txt", b"\x00\x01\x02\x03" * 500, "binary"),
    ("empty-text.md", b"   \n\n   \n", "No text could be extracted"),
    ("image-only.pdf", files.pdf([""]), "No text could be extracted"),
]


async def test_broken_and_encrypted_files_fail_with_a_reason_and_never_stall_the_queue(
    actors: Any, rag_api: Any
) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    uploaded = [
        (await alice.upload(collection["id"], name, content), reason)
        for name, content, reason in BROKEN
    ]
    good = await alice.upload(collection["id"], "good.txt", b"The Ostrander bridge opens at dawn.")
    for document, reason in uploaded:
        final = await alice.wait(document["id"])
        assert final["status"] == "failed", (document["filename"], final)
        assert reason.lower() in final["error"].lower(), (document["filename"], final["error"])
        assert final["chunk_count"] is None
    assert (await alice.wait(good["id"]))["status"] == "processed"
    hits = await alice.search(collection["id"], "Top secret", mode="sparse")
    assert all(hit["filename"] == "good.txt" for hit in hits)


async def test_pdf_encrypted_with_an_empty_user_password_is_read(actors: Any, rag_api: Any) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    document = await alice.ingest(
        collection["id"],
        "restricted.pdf",
        files.pdf(["Printing restricted, Morvail text."], user_password=""),
    )
    assert document["status"] == "processed", document["error"]
    hits = await alice.search(collection["id"], "Morvail", mode="sparse")
    assert hits and "Morvail" in hits[0]["text"]


async def test_unsupported_or_empty_uploads_are_refused(
    app: Any, actors: Any, rag_api: Any, settings: Settings
) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    cases = [
        ("tool.exe", b"MZ\x90\x00\x03" + b"\x00" * 100, 415, "unsupported_file_type"),
        ("old.doc", b"\xd0\xcf\x11\xe0" + b"\x00" * 100, 415, "unsupported_file_type"),
        ("empty.txt", b"", 400, "empty_file"),
    ]
    for name, content, status, code in cases:
        response = await alice.upload_raw(collection["id"], name, content)
        assert response.status_code == status, (name, response.text)
        assert response.json()["code"] == code
    assert _stored_files(settings) == []
    assert await _count_documents(app) == 0


async def test_malformed_requests_get_a_clear_400(
    app: Any, actors: Any, client: Any, rag_api: Any, settings: Settings
) -> None:
    user = await actors.user()
    alice = rag_api(user)
    collection = await alice.create_collection()
    url = f"{INTERNAL}/collections/{collection['id']}/documents"
    not_multipart = await client.post(url, json={"file": "x"}, headers=user["headers"])
    assert not_multipart.status_code == 400
    assert not_multipart.json()["code"] == "multipart_required"
    no_file = await client.post(
        url, data={"other": "x"}, files={"x": ("a", b"b")}, headers=user["headers"]
    )
    assert no_file.status_code == 400
    assert no_file.json()["code"] == "missing_file"
    bad_metadata = await alice.upload_raw(collection["id"], "a.txt", b"text", metadata="[1,2]")
    assert bad_metadata.status_code == 400
    two_files = await client.post(
        url,
        files=[("file", ("a.txt", b"one")), ("file", ("b.txt", b"two"))],
        headers=user["headers"],
    )
    assert two_files.status_code == 400
    assert two_files.json()["code"] == "too_many_files"

    body, headers = multipart_body(b"cut.txt", b"The body stops before its closing boundary.")
    truncated = await client.post(
        url, content=body[: body.rindex(b"\r\n--")], headers={**user["headers"], **headers}
    )
    assert truncated.status_code == 400
    assert truncated.json()["code"] == "incomplete_upload"

    huge_header = await client.post(
        url,
        content=b'--b\r\nContent-Disposition: form-data; name="'
        + b"x" * 20000
        + b'"\r\n\r\nv\r\n--b--\r\n',
        headers={**user["headers"], "Content-Type": "multipart/form-data; boundary=b"},
    )
    assert huge_header.status_code == 400
    many_parts = await client.post(
        url,
        data={f"f{n}": "v" for n in range(40)},
        files={"file": ("a.txt", b"x")},
        headers=user["headers"],
    )
    assert many_parts.status_code == 400
    assert await _count_documents(app) == 0
    assert _stored_files(settings) == []


# --- duplicates ----------------------------------------------------------------------------


async def test_same_content_is_reported_as_a_duplicate_not_embedded_again(
    app: Any, actors: Any, rag_api: Any
) -> None:
    alice = rag_api(await actors.user())
    collection = await alice.create_collection()
    content = b"The Quillfeather protocol has three phases."
    first = await alice.ingest(collection["id"], "a.txt", content)

    again = await alice.upload_raw(collection["id"], "renamed.txt", content)
    assert again.status_code == 200
    body = again.json()
    assert body["duplicate"] is True
    assert body["id"] == first["id"] and body["filename"] == "a.txt"
    assert body["status"] == "processed"
    assert await _count_documents(app) == 1
    store = app.state.enclava.extras["rag"].store
    name = f"enclava_{collection['id'].replace('-', '')}"
    assert await store.count(name) == first["chunk_count"]

    # Another collection is another scope.
    other = await alice.create_collection("other")
    elsewhere = await alice.upload_raw(other["id"], "a.txt", content)
    assert elsewhere.status_code == 202 and elsewhere.json()["duplicate"] is False
