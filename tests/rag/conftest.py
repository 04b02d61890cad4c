from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from enclava.app import create_app
from enclava.config import Settings
from tests.conftest import Actors

INTERNAL = "/api-internal/v1/rag"
PUBLIC = "/api/v1/rag"


class RagApi:
    """The RAG endpoints as one user (JWT, internal API) or one API key (public API) sees them."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str], base: str = INTERNAL):
        self.client = client
        self.headers = headers
        self.base = base

    async def create_collection(self, name: str = "docs", **fields: Any) -> dict[str, Any]:
        response = await self.client.post(
            f"{self.base}/collections", json={"name": name, **fields}, headers=self.headers
        )
        assert response.status_code == 201, response.text
        return response.json()

    async def upload_raw(
        self,
        collection_id: str,
        filename: str,
        content: bytes,
        content_type: str = "application/octet-stream",
        metadata: str | None = None,
    ) -> httpx.Response:
        data = {"metadata": metadata} if metadata is not None else None
        return await self.client.post(
            f"{self.base}/collections/{collection_id}/documents",
            files={"file": (filename, content, content_type)},
            data=data,
            headers=self.headers,
        )

    async def upload(self, collection_id: str, filename: str, content: bytes, **kw: Any) -> dict:
        response = await self.upload_raw(collection_id, filename, content, **kw)
        assert response.status_code == 202, response.text
        return response.json()

    async def document(self, document_id: str) -> httpx.Response:
        return await self.client.get(f"{self.base}/documents/{document_id}", headers=self.headers)

    async def wait(self, document_id: str, timeout_s: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            response = await self.document(document_id)
            assert response.status_code == 200, response.text
            body = response.json()
            if body["status"] in ("processed", "failed"):
                return body
            assert time.monotonic() < deadline, f"document still {body['status']}"
            await asyncio.sleep(0.2)

    async def ingest(self, collection_id: str, filename: str, content: bytes, **kw: Any) -> dict:
        document = await self.upload(collection_id, filename, content, **kw)
        return await self.wait(document["id"])

    async def search_raw(self, collection_id: str, query: str, **fields: Any) -> httpx.Response:
        return await self.client.post(
            f"{self.base}/collections/{collection_id}/search",
            json={"query": query, **fields},
            headers=self.headers,
        )

    async def search(self, collection_id: str, query: str, **fields: Any) -> list[dict[str, Any]]:
        response = await self.search_raw(collection_id, query, **fields)
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results


@pytest.fixture
def rag_api(client: httpx.AsyncClient) -> Any:
    def make(actor: dict[str, Any], base: str = INTERNAL) -> RagApi:
        return RagApi(client, actor["headers"], base)

    return make


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient, Actors]]:
    """An app on ``settings`` (for tests that need other settings or two apps in sequence).

    Do not combine with the ``app`` fixture on the same data dir: Qdrant's local store can be
    open once only.
    """
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield application, http, Actors(application, http)


def multipart_body(
    filename: bytes, content: bytes, content_type: bytes = b"text/plain"
) -> tuple[bytes, dict[str, str]]:
    """A hand-built multipart body, for filenames no HTTP client library would send as is."""
    boundary = b"----enclava-test-boundary-7MA4YWxkTrZu0gW"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: " + content_type + b"\r\n\r\n" + content + b"\r\n"
        b"--" + boundary + b"--\r\n"
    )
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}
