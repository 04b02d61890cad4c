"""The mock upstream: OpenAI shapes, directives, scripted faults and the CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson
import pytest

from enclava.testing.mock_upstream import (
    Directives,
    MockDrop,
    Simulator,
    SimulatorConfig,
    create_app,
)
from enclava.testing.server import free_port
from tests.specs.openai import assert_valid

CHAT = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def mock() -> tuple[Simulator, httpx.AsyncClient]:
    simulator = Simulator(SimulatorConfig(completion_tokens=5))
    transport = httpx.ASGITransport(app=create_app(simulator))
    client = httpx.AsyncClient(transport=transport, base_url="http://mock")
    return simulator, client


def test_directives_parse() -> None:
    directives = Directives()
    directives.merge("status=500x2@latency=5@tokens=3@no_usage,drop=4")
    assert (directives.status, directives.status_times, directives.latency_ms) == (500, 2, 5.0)
    assert (directives.tokens, directives.usage, directives.drop_after) == (3, False, 4)


def test_jitter_spreads_latency_reproducibly() -> None:
    """Each answer's delay is drawn from latency ± jitter (never negative), the same sequence
    for the same seed, so a benchmark's clients do not all wait exactly as long."""
    config = SimulatorConfig(latency_ms=50, latency_jitter_ms=20, jitter_seed=7)
    first, second = Simulator(config), Simulator(config)
    delays = [first.latency_of(first.directives("mock-chat", None)) for _ in range(500)]
    assert delays == [second.latency_of(second.directives("mock-chat", None)) for _ in range(500)]
    assert all(30 <= d <= 70 for d in delays) and len(set(delays)) > 450
    assert min(delays) < 35 and max(delays) > 65  # the whole range is used
    # A directive sets it per request; a spread wider than the latency stops at 0.
    wide = first.directives("mock-chat@latency=5@jitter=50", None)
    assert wide.jitter_ms == 50 and all(first.latency_of(wide) >= 0 for _ in range(200))
    assert any(first.latency_of(wide) == 0 for _ in range(200))
    fixed = Simulator(SimulatorConfig(latency_ms=50))
    assert {fixed.latency_of(fixed.directives("mock-chat", None)) for _ in range(10)} == {50}


async def test_answers_validate_against_openai(mock: tuple[Simulator, httpx.AsyncClient]) -> None:
    simulator, client = mock
    async with client:
        body = (await client.post("/v1/chat/completions", json=CHAT)).json()
        assert_valid("CreateChatCompletionResponse", body)
        assert body["usage"]["completion_tokens"] == 5
        streamed = await client.post(
            "/v1/chat/completions",
            json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        )
        lines = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
        assert lines[-1] == "[DONE]"
        for line in lines[:-1]:
            assert_valid("CreateChatCompletionStreamResponse", orjson.loads(line))
        embedded = (
            await client.post("/v1/embeddings", json={"model": "e", "input": ["a", "b"]})
        ).json()
        assert_valid("CreateEmbeddingResponse", embedded)
        assert_valid("ListModelsResponse", (await client.get("/v1/models")).json())
        assert simulator.total_requests == 3


async def test_status_then_success_and_scripts(mock: tuple[Simulator, httpx.AsyncClient]) -> None:
    simulator, client = mock
    async with client:
        flaky = {**CHAT, "model": "mock-chat@status=503x2"}
        codes = [
            (await client.post("/v1/chat/completions", json=flaky)).status_code for _ in range(3)
        ]
        assert codes == [503, 503, 200]
        await client.post(
            "/_mock/script", json={"model": "mock-chat", "directives": ["status=429", "tokens=2"]}
        )
        limited = await client.post("/v1/chat/completions", json=CHAT)
        assert limited.status_code == 429 and limited.headers["retry-after"] == "0"
        assert limited.json()["error"]["type"] == "rate_limit_error"
        short = (await client.post("/v1/chat/completions", json=CHAT)).json()
        assert short["usage"]["completion_tokens"] == 2
        header = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-mock-directives": "status=500"}
        )
        assert header.status_code == 500
        stats = (await client.get("/_mock/stats")).json()
        assert stats["counts"]["/chat/completions mock-chat"] == 3
        await client.post("/_mock/reset")
        assert simulator.total_requests == 0


async def test_dropped_stream_has_no_done(mock: tuple[Simulator, httpx.AsyncClient]) -> None:
    simulator, _ = mock
    directives = Directives(drop_after=2)
    chunks = []
    with pytest.raises(MockDrop):
        async for chunk in simulator.chat_stream({**CHAT, "stream": True}, directives):
            chunks.append(chunk)
    assert len(chunks) == 2


def test_cli_serves_the_simulator(tmp_path: Path) -> None:
    port = free_port()
    enclava = Path(sys.executable).with_name("enclava")
    proc = subprocess.Popen(
        [
            str(enclava),
            "mock-upstream",
            "--port",
            str(port),
            "--completion-tokens",
            "3",
            "--latency-ms",
            "2",
            "--latency-jitter-ms",
            "2",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/v1/chat/completions", json=CHAT, timeout=2
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "mock-upstream did not start"
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)
