"""Path traversal in every endpoint that takes a file name: the static files, and every
multipart upload the OpenAPI document describes (found from the schema, so the RAG uploads are
covered as soon as they land). Run with threat detection off as well, so the endpoints
themselves are shown to neutralise the names, not only the scanner in front of them."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, UploadFile

from enclava.auth.dependencies import UserSubject
from enclava.config import Settings
from enclava.testing.threat_corpus import Probe, send_probe
from tests.conftest import Actors
from tests.security.conftest import AppClient
from tests.security.openapi_probe import multipart_operations
from tests.security.resources import FACTORIES, chat_model, create_resources

STATIC_TRAVERSALS = [
    "/static/../router.py",
    "/static/..%2frouter.py",
    "/static/%2e%2e/router.py",
    "/static/%2e%2e%2frouter.py",
    "/static/..%5crouter.py",
    "/static/..\\router.py",
    "/static/....//router.py",
    "/static/..%252frouter.py",
    "/static/%2e%2e/%2e%2e/config.py",
    "/static//etc/passwd",
    "/static/%2fetc%2fpasswd",
    "/static/enclava.css%00.py",
]
SOURCE_MARKERS = (b"def index", b"class Settings", b"root:x:0:0")


def evil_filenames(canary: str) -> list[str]:
    return [
        f"../../{canary}.txt",
        f"..\\..\\{canary}.txt",
        f"/tmp/{canary}.txt",
        f"....//....//{canary}.txt",
        f"%2e%2e%2f%2e%2e%2f{canary}.txt",
        f"sub/dir/../../../{canary}.txt",
        f"{canary}.txt\x00.pdf",
        f"C:\\Windows\\{canary}.txt",
    ]


def canaries_outside(root: Path, allowed: Path, canary: str) -> list[Path]:
    return [
        path for path in root.rglob(f"*{canary}*") if allowed not in path.parents and path.is_file()
    ]


@pytest.mark.parametrize("mode", ["block", "off"])
async def test_filename_endpoints_neutralise_traversal(
    app_client: AppClient, settings: Settings, mode: str
) -> None:
    async with app_client(threat_detection=mode) as (app, client):
        # Static files: never a file from outside the static folder.
        for path in STATIC_TRAVERSALS:
            status, body = await send_probe(app, Probe("GET", path))
            assert status in (400, 403, 404), (path, status)
            assert not any(marker in body for marker in SOURCE_MARKERS), path
        sane = await client.get("/static/enclava.css")
        assert sane.status_code == 200

        # Uploads: every multipart operation, every evil name.
        assert await upload_problems(app, client, settings) == []


async def upload_problems(app: Any, client: httpx.AsyncClient, settings: Settings) -> list[str]:
    """Every way an evil file name escaped on the multipart operations of the API."""
    openapi = app.openapi()
    uploads = [op for op in multipart_operations(openapi) if not op.is_public]
    if not uploads:
        return []
    problems = []
    owner = await Actors(app, client).user()
    model = await chat_model(client, owner["headers"])
    ids = await create_resources(client, openapi, owner, "traversal", model, FACTORIES)
    root = settings.data_dir.parent
    for operation in uploads:  # the public twins run the same service behind an API key
        request = operation.minimal_request()
        values = {
            p["name"]: ids.get(operation.kind_of(p["name"]) or "", "")
            for p in operation.path_params
        }
        path = operation.fill(values)
        field = next(key for key, value in (request.body or {}).items() if isinstance(value, bytes))
        for name in evil_filenames(canary := f"canary-{uuid.uuid4().hex[:8]}"):
            response = await client.post(
                path,
                files={field: (name, f"{canary} body".encode(), "text/plain")},
                headers=owner["headers"],
            )
            label = f"{operation.path} {name!r}"
            if response.status_code >= 500:
                problems.append(f"{label}: {response.status_code}")
            elif response.status_code < 300:
                stored = str(response.json().get("filename", ""))
                # A display name only: no separators left that could ever make it a path.
                if any(part in stored for part in ("/", "\\", "\x00")):
                    problems.append(f"{label}: stored as {stored!r}")
            escaped = canaries_outside(root, settings.uploads_dir, canary)
            escaped += [
                p
                for p in (Path("/tmp") / f"{canary}.txt", Path("/") / f"{canary}.txt")
                if p.exists()
            ]
            problems += [f"{label}: wrote {path}" for path in escaped]
    return problems


async def test_the_upload_probe_catches_a_naive_upload_route(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    """A route that trusts the client's file name proves the probe above can fail."""
    router = APIRouter(prefix="/api-internal/v1/zz-files")

    @router.post("", status_code=201)
    async def naive_upload(file: UploadFile, subject: UserSubject) -> dict[str, str]:
        name = (file.filename or "upload").lstrip("/")
        target = settings.uploads_dir / name  # the bug: the name is used as a path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(await file.read())
        return {"id": str(uuid.uuid4()), "filename": name}

    app.include_router(router)
    app.openapi_schema = None
    problems = await upload_problems(app, client, settings)
    assert any("zz-files '../../canary-" in p and "wrote" in p for p in problems), problems
    assert any("stored as" in p for p in problems), problems
