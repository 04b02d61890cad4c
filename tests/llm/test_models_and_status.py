"""/models (per-key visibility, simulated labels), provider status and privatemode manifests."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclava.config import Settings
from enclava.testing.mock_upstream import Simulator
from tests.conftest import Actors
from tests.llm.conftest import CHAT, key_for
from tests.llm.helpers import app_with_providers, sse_events, usage_rows
from tests.specs.openai import assert_valid


async def test_models_list_only_what_the_key_may_use(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    everything = await key_for(actors)
    response = await client.get("/api/v1/models", headers=everything["headers"])
    assert_valid("ListModelsResponse", response.json())
    ids = {m["id"] for m in response.json()["data"]}
    assert {"chat-model", "confidential-model", "embed-model", "multilingual-e5-small"} <= ids

    limited = await key_for(actors, allowed_models=["chat-model", "confidential-model"])
    response = await client.get("/api/v1/models", headers=limited["headers"])
    assert {m["id"] for m in response.json()["data"]} == {"chat-model", "confidential-model"}
    hidden = await client.get("/api/v1/models/embed-model", headers=limited["headers"])
    assert hidden.status_code == 404

    confidential = await key_for(actors, confidential_only=True)
    response = await client.get("/api/v1/models", headers=confidential["headers"])
    data = response.json()["data"]
    assert data and all(m["confidential"] for m in data)

    one = await client.get("/api/v1/models/confidential-model", headers=everything["headers"])
    assert_valid("Model", one.json())
    assert one.json()["owned_by"] == "pm" and one.json()["pricing"]["input_per_million"] == "0.5"
    no_scope = await key_for(actors, scopes=["llm.chat"])
    assert (await client.get("/api/v1/models", headers=no_scope["headers"])).status_code == 403


async def test_upstream_model_lists_are_cached(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    for _ in range(3):
        response = await client.get("/api/v1/models", headers=key["headers"])
        assert response.status_code == 200
    # Four HTTP providers share the one mock: each list was fetched once, then cached.
    assert mock_upstream.counts["GET /models"] == 4
    chat = next(m for m in response.json()["data"] if m["id"] == "chat-model")
    assert chat["available"] is True


async def test_nothing_configured_serves_clearly_simulated_models(
    settings: Settings, tmp_path: Path
) -> None:
    async with app_with_providers(settings, None, tmp_path) as (app, client):
        key = await key_for(Actors(app, client))
        models = (await client.get("/api/v1/models", headers=key["headers"])).json()["data"]
        chat = [m for m in models if m["kind"] == "chat"]
        assert chat and all(m["simulated"] and "simulated" in m["id"] for m in chat)
        assert all(m["owned_by"] == "enclava-simulated" for m in chat)
        response = await client.post(
            "/api/v1/chat/completions",
            json={**CHAT, "model": "simulated-chat"},
            headers=key["headers"],
        )
        assert response.status_code == 200
        assert_valid("CreateChatCompletionResponse", response.json())
        assert "simulated" in response.json()["choices"][0]["message"]["content"]
        streamed = await client.post(
            "/api/v1/chat/completions",
            json={
                **CHAT,
                "model": "simulated-chat",
                "stream": True,
                "stream_options": {"include_usage": True},
            },
            headers=key["headers"],
        )
        events = sse_events(streamed.text)
        assert events[-1] == "[DONE]" and events[-2]["usage"]["cost_usd"]
        status = (await client.get("/api/v1/llm/providers/status", headers=key["headers"])).json()
        [simulated] = [p for p in status["data"] if p["name"] == "simulated"]
        assert simulated["simulated"] and simulated["status"] == "ok"
        assert [r.provider for r in await usage_rows(app)] == ["simulated", "simulated"]


def _write_manifests(folder: Path, versions: list[bytes]) -> None:
    manifests = folder / "manifests"
    manifests.mkdir(parents=True)
    lines = []
    for number, content in enumerate(versions, start=1):
        (manifests / f"{number}.json").write_bytes(content)
        lines.append(f"2026-01-0{number}T10:00:00Z /proxy/workspace/manifests/{number}.json")
    (manifests / "log.txt").write_text("\n".join(lines) + "\n")


PM_YAML = """
providers:
  - name: pm
    type: privatemode
    base_url: {url}/v1
    manifest_dir: {workspace}
    expected_manifest_sha256: {pin}
models:
  - id: pm-model
    provider: pm
    upstream_model: latest
"""


async def test_privatemode_status_shows_manifest_and_pin_refuses_mismatch(
    settings: Settings,
    tmp_path: Path,
    mock_upstream_server: tuple[str, Simulator],
    mock_upstream: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Re-read the manifest folder on every call instead of at most once a second.
    monkeypatch.setattr("enclava.llm.providers.privatemode._RECHECK_S", 0.0)
    url, _ = mock_upstream_server
    workspace = tmp_path / "workspace"
    _write_manifests(workspace, [b'{"v": 1}', b'{"v": 2}'])
    current = hashlib.sha256(b'{"v": 2}').hexdigest()

    async with app_with_providers(
        settings, PM_YAML.format(url=url, workspace=workspace, pin=current), tmp_path
    ) as (app, client):
        key = await key_for(Actors(app, client))
        status = (await client.get("/api/v1/llm/providers/status", headers=key["headers"])).json()
        [pm] = [p for p in status["data"] if p["name"] == "pm"]
        assert pm["confidential"] and pm["status"] == "ok" and pm["refused"] is None
        assert pm["manifest"] == {
            "version": 2,
            "verified_at": "2026-01-02T10:00:00Z",
            "sha256": current,
            "file": "2.json",
        }
        assert pm["manifest_matches"] is True
        ok = await client.post(
            "/api/v1/chat/completions", json={**CHAT, "model": "pm-model"}, headers=key["headers"]
        )
        assert ok.status_code == 200

        # The proxy verifies a new deployment manifest that the admin has not pinned.
        (workspace / "manifests" / "3.json").write_bytes(b'{"v": 3}')
        with (workspace / "manifests" / "log.txt").open("a") as log:
            log.write("2026-01-03T10:00:00Z /proxy/workspace/manifests/3.json\n")
        calls = mock_upstream.total_requests
        refused = await client.post(
            "/api/v1/chat/completions", json={**CHAT, "model": "pm-model"}, headers=key["headers"]
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "manifest_mismatch"
        assert mock_upstream.total_requests == calls
        status = (await client.get("/api/v1/llm/providers/status", headers=key["headers"])).json()
        [pm] = [p for p in status["data"] if p["name"] == "pm"]
        assert pm["manifest"]["version"] == 3 and pm["manifest_matches"] is False
        assert pm["refused"] == "manifest_mismatch" and pm["status"] == "unavailable"


async def test_response_cache_is_per_user_and_off_by_default(
    settings: Settings,
    tmp_path: Path,
    mock_upstream_server: tuple[str, Simulator],
    mock_upstream: Simulator,
) -> None:
    url, _ = mock_upstream_server
    yaml = (
        "providers:\n  - {name: open, type: openai, base_url: '" + url + "/v1'}\n"
        "models:\n"
        "  - {id: cached, provider: open, upstream_model: mock-chat, response_cache_ttl_s: 60, input_price_per_million: 1}\n"
        "  - {id: uncached, provider: open, upstream_model: mock-chat, input_price_per_million: 1}\n"
    )
    async with app_with_providers(settings, yaml, tmp_path) as (app, client):
        actors = Actors(app, client)
        first, second = await key_for(actors), await key_for(actors)
        for _ in range(2):
            await client.post(
                "/api/v1/chat/completions",
                json={**CHAT, "model": "uncached"},
                headers=first["headers"],
            )
        assert mock_upstream.total_requests == 2
        a = await client.post(
            "/api/v1/chat/completions", json={**CHAT, "model": "cached"}, headers=first["headers"]
        )
        b = await client.post(
            "/api/v1/chat/completions", json={**CHAT, "model": "cached"}, headers=first["headers"]
        )
        assert a.json() == b.json() and mock_upstream.total_requests == 3
        assert b.headers["x-enclava-cost-usd"] == "0"
        # A cached answer is still a request: counted against the key's rate limit.
        remaining = int(a.headers["x-ratelimit-remaining"])
        assert int(b.headers["x-ratelimit-remaining"]) == remaining - 1
        await client.post(
            "/api/v1/chat/completions", json={**CHAT, "model": "cached"}, headers=second["headers"]
        )
        assert mock_upstream.total_requests == 4
        statuses = [r.status for r in await usage_rows(app)]
        assert statuses.count("cached") == 1 and statuses.count("success") == 4


async def test_embeddings_via_provider_and_local_model(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    response = await client.post(
        "/api/v1/embeddings",
        json={"model": "embed-model", "input": "hello"},
        headers=key["headers"],
    )
    assert response.status_code == 200
    assert_valid("CreateEmbeddingResponse", response.json())
    local = await client.post(
        "/api/v1/embeddings",
        json={"model": "multilingual-e5-small", "input": ["Bonjour", "Guten Tag"]},
        headers=key["headers"],
    )
    assert local.status_code == 200, local.text
    body = local.json()
    assert_valid("CreateEmbeddingResponse", body)
    assert [len(d["embedding"]) for d in body["data"]] == [384, 384]
    encoded = await client.post(
        "/api/v1/embeddings",
        json={"model": "multilingual-e5-small", "input": "Bonjour", "encoding_format": "base64"},
        headers=key["headers"],
    )
    import base64
    import struct

    vector = struct.unpack("<384f", base64.b64decode(encoded.json()["data"][0]["embedding"]))
    assert abs(vector[0] - body["data"][0]["embedding"][0]) < 1e-6
    tokens = await client.post(
        "/api/v1/embeddings",
        json={"model": "multilingual-e5-small", "input": [1, 2, 3]},
        headers=key["headers"],
    )
    assert tokens.status_code == 400
    for bad in (
        {"model": "embed-model", "input": ""},
        {"model": "embed-model", "input": []},
        {"model": "embed-model", "input": "x", "encoding_format": "hex"},
        {"model": "chat-model", "input": "x"},
    ):
        assert (
            await client.post("/api/v1/embeddings", json=bad, headers=key["headers"])
        ).status_code == 400, bad
    rows = await usage_rows(app)
    assert [r.endpoint for r in rows if r.status == "success"] == ["embeddings"] * 3
    assert all(r.provider in ("mock", "local") for r in rows)
