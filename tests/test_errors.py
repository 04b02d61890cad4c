from __future__ import annotations

from typing import Any

import httpx
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from enclava.errors import NotFoundError, QuotaExceededError, install_error_handlers
from enclava.kit.middleware import RequestIdMiddleware


class Payload(BaseModel):
    count: int


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    for prefix in ("/api/v1", "/api-internal/v1"):
        router = APIRouter(prefix=prefix)

        @router.get("/missing")
        async def missing() -> None:
            raise NotFoundError("Chatbot not found", param="chatbot_id")

        @router.get("/quota")
        async def quota() -> None:
            raise QuotaExceededError("Budget exhausted")

        @router.get("/boom")
        async def boom() -> None:
            raise RuntimeError("secret internals: password=hunter2")

        @router.post("/payload")
        async def payload(body: Payload) -> dict[str, Any]:
            return {"count": body.count}

        app.include_router(router)
    app.add_middleware(RequestIdMiddleware)
    return app


async def _client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=_app(), raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


async def test_public_api_errors_have_openai_shape() -> None:
    async with await _client() as client:
        response = await client.get("/api/v1/missing")
    assert response.status_code == 404
    assert response.json() == {
        "error": {
            "message": "Chatbot not found",
            "type": "invalid_request_error",
            "param": "chatbot_id",
            "code": "not_found",
        }
    }
    assert response.headers["x-request-id"]


async def test_quota_error_is_insufficient_quota_429() -> None:
    async with await _client() as client:
        response = await client.get("/api/v1/quota")
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    assert response.json()["error"]["type"] == "insufficient_quota"


async def test_internal_api_errors_have_detail_and_code() -> None:
    async with await _client() as client:
        response = await client.get("/api-internal/v1/missing")
    assert response.status_code == 404
    assert response.json() == {"detail": "Chatbot not found", "code": "not_found"}


async def test_unhandled_errors_leak_nothing() -> None:
    async with await _client() as client:
        for path in ("/api/v1/boom", "/api-internal/v1/boom"):
            response = await client.get(path)
            assert response.status_code == 500
            assert "hunter2" not in response.text and "Traceback" not in response.text
            assert response.headers["x-request-id"]


async def test_malformed_json_is_a_client_error() -> None:
    async with await _client() as client:
        public = await client.post(
            "/api/v1/payload", content=b"{not json", headers={"content-type": "application/json"}
        )
        internal = await client.post(
            "/api-internal/v1/payload",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        wrong_type = await client.post("/api/v1/payload", json={"count": "many"})
    assert public.status_code == 400
    assert public.json()["error"]["type"] == "invalid_request_error"
    assert internal.status_code == 422
    assert internal.json()["code"] == "validation_error"
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"]["param"] == "count"


async def test_unknown_route_is_shaped_404() -> None:
    async with await _client() as client:
        response = await client.get("/api/v1/does-not-exist")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_request_id_is_echoed_when_well_formed() -> None:
    async with await _client() as client:
        good = await client.get("/api/v1/missing", headers={"X-Request-ID": "abc-123-def-456"})
        bad = await client.get("/api/v1/missing", headers={"X-Request-ID": "bad id\r\n"})
    assert good.headers["x-request-id"] == "abc-123-def-456"
    assert bad.headers["x-request-id"] != "bad id"
    assert len(bad.headers["x-request-id"]) == 32
