"""Request body limits: declared and streamed, both error shapes, uploads' own limit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from enclava.app import create_app
from enclava.config import Settings
from enclava.security.body_limit import MULTIPART_OVERHEAD_BYTES
from enclava.security.routes import is_upload_route
from enclava.testing.server import serve_in_thread
from tests.conftest import PASSWORD, Actors
from tests.security.conftest import AppClient

SOME_ID = "3f1c9a8e-5b7d-4c2e-9a1f-0d6b8e2c4a10"


def multipart_operations(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    found = []
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            content = operation.get("requestBody", {}).get("content", {})
            if "multipart/form-data" in content:
                found.append((method.upper(), path))
    return found


async def chunks(total: int, size: int = 1024) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"x" * piece


async def test_declared_length_over_the_limit_is_413_in_each_shape(
    app_client: AppClient,
) -> None:
    async with app_client(max_request_body_bytes=1000) as (_, client):
        body = b'{"email": "a@example.com", "password": "' + b"p" * 2000 + b'"}'
        internal = await client.post(
            "/api-internal/v1/auth/login",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        assert internal.status_code == 413
        assert internal.json()["code"] == "payload_too_large"
        assert internal.headers["x-request-id"]
        public = await client.post(
            "/api/v1/chat/completions",
            content=body,
            headers={"Content-Type": "application/json", "Authorization": "Bearer ek_x"},
        )
        assert public.status_code == 413
        assert public.json()["error"]["code"] == "payload_too_large"


async def test_streamed_body_without_length_is_cut_off(app_client: AppClient) -> None:
    async with app_client(max_request_body_bytes=4096) as (app, client):
        admin = await Actors(app, client).user(role="admin")
        response = await client.post(
            "/api-internal/v1/users",
            content=chunks(64 * 1024),
            headers={**admin["headers"], "Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["code"] == "payload_too_large"


def test_streamed_body_is_cut_off_by_a_real_server(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_request_body_bytes": 4096}))

    def stream() -> Iterator[bytes]:
        for _ in range(256):
            yield b"y" * 1024

    with serve_in_thread(app) as url, httpx.Client(base_url=url) as http:
        response = http.post(
            "/api-internal/v1/auth/login",
            content=stream(),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"


async def test_bodies_within_the_limit_arrive_intact(app_client: AppClient) -> None:
    async with app_client(max_request_body_bytes=4096) as (app, client):
        user = await Actors(app, client).user()
        response = await client.post(
            "/api-internal/v1/auth/login",
            content=chunks(0),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422  # empty body: the app saw it, not the limiter
        login = await client.post(
            "/api-internal/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
        )
        assert login.status_code == 200


async def test_uploads_have_their_own_larger_limit(app_client: AppClient) -> None:
    async with app_client(max_request_body_bytes=1000, max_upload_bytes=50_000) as (app, client):
        user = await Actors(app, client).user()
        # Every multipart operation the API documents is an upload route for the limiter.
        for method, path in multipart_operations(app.openapi()):
            assert is_upload_route(path), f"{method} {path} takes files; add it to UPLOAD_ROUTES"
        for prefix in ("/api-internal/v1", "/api/v1"):
            path = f"{prefix}/rag/collections/{SOME_ID}/documents"
            within = await client.post(
                path, files={"file": ("a.txt", b"a" * 20_000)}, headers=user["headers"]
            )
            assert within.status_code != 413, within.text
            over = await client.post(
                path,
                files={"file": ("a.txt", b"a" * (50_000 + MULTIPART_OVERHEAD_BYTES + 1))},
                headers=user["headers"],
            )
            assert over.status_code == 413
        # The upload allowance does not leak to other routes.
        other = await client.post(
            "/api-internal/v1/rag/collections",
            files={"file": ("a.txt", b"a" * 20_000)},
            headers=user["headers"],
        )
        assert other.status_code == 413
