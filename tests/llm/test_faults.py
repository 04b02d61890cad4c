"""Resilience with the mock upstream: retries, timeouts, dropped streams, fallbacks, breaker."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from enclava.auth import repository as users
from enclava.auth.subject import AuthSubject
from enclava.db import transaction
from enclava.llm import gateway
from enclava.models import ApiKey
from enclava.testing.mock_upstream import Simulator
from tests.conftest import Actors
from tests.llm.conftest import CHAT, key_for
from tests.llm.helpers import add_budget, budget, sse_events, usage_cost_sum, usage_rows
from tests.specs.openai import assert_valid

URL = "/api/v1/chat/completions"


def upstream_calls(sim: Simulator, model: str) -> int:
    return sim.counts.get(f"/chat/completions {model}", 0)


async def test_5xx_then_success_is_retried_and_charged_once(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], 10**9)
    response = await client.post(URL, json={**CHAT, "model": "flaky-model"}, headers=key["headers"])
    assert response.status_code == 200, response.text
    assert upstream_calls(mock_upstream, "mock-chat@status=500x1") == 2
    [row] = await usage_rows(app)
    assert row.status == "success"
    assert (await budget(app, budget_id)).spent_nanousd == row.cost_nanousd > 0


async def test_scripted_429_is_retried_then_succeeds(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    mock_upstream.script.extend([("mock-chat", "status=429"), ("mock-chat", "status=502")])
    response = await client.post(URL, json=CHAT, headers=key["headers"])
    assert response.status_code == 200
    assert upstream_calls(mock_upstream, "mock-chat") == 3
    assert [r.status for r in await usage_rows(app)] == ["success"]


async def test_timeout_gives_clean_error_and_releases_the_reservation(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], 10**9)
    response = await client.post(
        URL, json={**CHAT, "model": "timeout-model"}, headers=key["headers"]
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_timeout"
    assert_valid("ErrorResponse", response.json())
    [row] = await usage_rows(app)
    assert (row.status, row.error_code, row.cost_nanousd) == ("error", "upstream_timeout", 0)
    state = await budget(app, budget_id)
    assert (state.spent_nanousd, state.reserved_nanousd) == (0, 0)


async def test_dropped_stream_ends_with_error_event_and_bills_what_was_delivered(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], 10**9)
    request = {
        **CHAT,
        "model": "dropping-model",
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = await client.post(URL, json=request, headers=key["headers"])
    assert response.status_code == 200
    events = sse_events(response.text)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_disconnected"
    assert_valid("ErrorResponse", events[-1])
    delivered = [e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert len(delivered) == 3  # role chunk + 3 words, then the connection dropped
    [row] = await usage_rows(app)
    assert (row.status, row.error_code, row.streamed) == ("error", "upstream_disconnected", True)
    assert row.completion_tokens == 3 and row.prompt_tokens > 0
    assert row.cost_nanousd == row.prompt_tokens * 1000 + row.completion_tokens * 2000
    state = await budget(app, budget_id)
    assert (state.spent_nanousd, state.reserved_nanousd) == (row.cost_nanousd, 0)


async def test_fallback_serves_from_another_provider(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    response = await client.post(
        URL, json={**CHAT, "model": "broken-model"}, headers=key["headers"]
    )
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "backup-model"
    assert response.headers["x-enclava-provider"] == "backup"
    assert upstream_calls(mock_upstream, "mock-chat@status=503") == 3  # 1 + 2 retries
    [row] = await usage_rows(app)
    assert (row.model, row.provider) == ("backup-model", "backup")
    # Billed at the fallback's prices (3 and 6 USD / M).
    assert row.cost_nanousd == row.prompt_tokens * 3000 + row.completion_tokens * 6000


async def test_fallbacks_respect_confidential_only_and_allowed_models(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    confidential = await key_for(actors, confidential_only=True)
    request = {**CHAT, "model": "broken-confidential-fallback"}
    response = await client.post(URL, json=request, headers=confidential["headers"])
    assert response.status_code == 200
    # backup-model is not confidential, so it is skipped for this key.
    assert response.json()["model"] == "confidential-model"
    assert upstream_calls(mock_upstream, "mock-backup") == 0

    allowed = await key_for(actors, allowed_models=["broken-model"])
    response = await client.post(
        URL, json={**CHAT, "model": "broken-model"}, headers=allowed["headers"]
    )
    assert response.status_code == 502
    assert upstream_calls(mock_upstream, "mock-backup") == 0


async def test_circuit_breaker_opens_and_stops_calling_the_provider(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, allowed_models=["broken-model"])  # no fallback allowed
    first = await client.post(URL, json={**CHAT, "model": "broken-model"}, headers=key["headers"])
    assert first.status_code == 502
    calls = upstream_calls(mock_upstream, "mock-chat@status=503")
    assert calls == 3  # threshold 3 reached by the retries
    second = await client.post(URL, json={**CHAT, "model": "broken-model"}, headers=key["headers"])
    assert second.status_code == 503
    assert second.json()["error"]["code"] == "circuit_open"
    assert upstream_calls(mock_upstream, "mock-chat@status=503") == calls
    # Other models of the same provider are refused too while the circuit is open.
    other = await key_for(actors)
    third = await client.post(URL, json=CHAT, headers=other["headers"])
    assert third.status_code == 503
    status = await client.get("/api/v1/llm/providers/status", headers=key["headers"])
    [mock] = [p for p in status.json()["data"] if p["name"] == "mock"]
    assert mock["circuit"]["state"] == "open" and mock["status"] == "unavailable"
    assert all(r.status == "error" and r.cost_nanousd == 0 for r in await usage_rows(app))


async def test_client_disconnect_mid_stream_settles(
    app: Any, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], 10**9)
    mock_upstream.config.chunk_latency_ms = 20
    state = app.state.enclava
    async with transaction(state.session_factory) as session:
        user = await users.get_user(session, key["owner"]["id"])
        api_key = await session.get(ApiKey, key["id"])
    assert user is not None and api_key is not None
    subject = AuthSubject(kind="api_key", user=user, api_key=api_key)
    stream = await gateway.chat_completion(state, subject, {**CHAT, "stream": True})
    assert isinstance(stream, gateway.ChatStream)
    received = [await stream.__anext__() for _ in range(3)]
    assert received[-1]["choices"][0]["delta"]["content"]
    # The consumer goes away while the upstream is still producing.
    consumer = asyncio.ensure_future(stream.__anext__())
    await asyncio.sleep(0.005)
    consumer.cancel()
    await stream.aclose()
    [row] = await usage_rows(app)
    assert (row.status, row.error_code) == ("cancelled", "client_disconnected")
    assert 1 <= row.completion_tokens < 12
    ledger = await budget(app, budget_id)
    assert ledger.reserved_nanousd == 0
    assert ledger.spent_nanousd == await usage_cost_sum(app) == row.cost_nanousd


async def test_client_closing_a_real_stream_settles_what_was_delivered(
    app: Any, settings: Any, actors: Actors, mock_upstream: Simulator, tmp_path: Any
) -> None:
    from enclava.app import create_app
    from enclava.testing.server import serve_in_thread
    from tests.llm.helpers import second_instance

    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], 10**9)
    mock_upstream.config.chunk_latency_ms = 30
    mock_upstream.config.completion_tokens = 200
    request = {**CHAT, "stream": True, "max_tokens": 200}
    with serve_in_thread(create_app(second_instance(settings, tmp_path))) as url:
        async with (
            httpx.AsyncClient(base_url=url, timeout=10) as http,
            http.stream(
                "POST", "/api/v1/chat/completions", json=request, headers=key["headers"]
            ) as response,
        ):
            assert response.status_code == 200
            seen = 0
            async for line in response.aiter_lines():
                if (
                    line.startswith("data: ")
                    and '"content":"' in line
                    and '"content":""' not in line
                ):
                    seen += 1
                if seen == 3:
                    break  # the client goes away mid-stream
        # The server notices the disconnect, stops the upstream and settles (the usage row
        # is committed first, then the reservation is released in the ledger).
        for _ in range(200):
            rows = await usage_rows(app)
            if rows and (await budget(app, budget_id)).reserved_nanousd == 0:
                break
            await asyncio.sleep(0.05)
    [row] = rows
    assert (row.status, row.error_code, row.streamed) == ("cancelled", "client_disconnected", True)
    assert 3 <= row.completion_tokens < 200
    ledger = await budget(app, budget_id)
    assert ledger.reserved_nanousd == 0 and ledger.spent_nanousd == row.cost_nanousd > 0
