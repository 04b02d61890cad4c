from __future__ import annotations

import httpx

from enclava.state import AppState


async def test_health_is_live(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_checks_database_and_cache(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == "ok" and body["checks"]["cache"] == "ok"


async def test_ready_reports_a_failing_dependency(app: object, client: httpx.AsyncClient) -> None:
    state: AppState = app.state.enclava  # type: ignore[attr-defined]

    async def broken() -> None:
        raise ConnectionError("vector store down")

    state.readiness_checks["vector_store"] = broken
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["vector_store"] == "unavailable"
    assert "vector store down" not in response.text


async def test_openapi_lists_both_apis(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert any(p.startswith("/api-internal/v1/") for p in paths)
    docs = await client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
