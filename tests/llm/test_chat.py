"""Chat completions through the gateway: OpenAI shapes, pass-through, costs and usage rows."""

from __future__ import annotations

from typing import Any

import httpx

from enclava.testing.mock_upstream import Simulator
from tests.conftest import Actors
from tests.llm.conftest import CHAT, key_for
from tests.llm.helpers import add_budget, budget, sse_events, usage_rows
from tests.specs.openai import assert_valid

URL = "/api/v1/chat/completions"


async def test_completion_matches_openai_schema_and_is_billed(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], 10**9)
    response = await client.post(URL, json=CHAT, headers=key["headers"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert body["model"] == "chat-model"
    usage = body["usage"]
    # 1 USD / M input, 2 USD / M output, in nano-dollars per token: 1000 and 2000.
    expected = usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000
    assert response.headers["x-enclava-cost-usd"] == format(expected / 1e9, ".9f").rstrip("0")
    assert usage["cost_usd"] == response.headers["x-enclava-cost-usd"]
    assert response.headers["x-enclava-prompt-tokens"] == str(usage["prompt_tokens"])
    [row] = await usage_rows(app)
    assert (row.status, row.model, row.provider, row.streamed) == (
        "success",
        "chat-model",
        "mock",
        False,
    )
    assert (row.prompt_tokens, row.completion_tokens, row.cost_nanousd) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
        expected,
    )
    assert row.api_key_id == key["id"] and row.user_id == key["owner"]["id"]
    spent = await budget(app, budget_id)
    assert (spent.spent_nanousd, spent.reserved_nanousd) == (expected, 0)


async def test_full_request_surface_reaches_the_upstream(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    request = {
        "model": "chat-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
                ],
            },
        ],
        "tools": tools,
        "tool_choice": {"type": "function", "function": {"name": "lookup"}},
        "response_format": {"type": "json_object"},
        "stop": ["\n\n"],
        "n": 2,
        "seed": 7,
        "logprobs": True,
        "top_logprobs": 2,
        "temperature": 0.2,
        "max_tokens": 100000,
        "user": "end-user-1",
    }
    response = await client.post(URL, json=request, headers=key["headers"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert len(body["choices"]) == 2
    assert body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    sent = mock_upstream.requests[-1]["body"]
    for field in (
        "messages",
        "tools",
        "tool_choice",
        "response_format",
        "stop",
        "n",
        "seed",
        "logprobs",
        "top_logprobs",
        "temperature",
        "user",
    ):
        assert sent[field] == request[field], field
    # The upstream name is used, and the output limit is explicit and capped at the model's.
    assert sent["model"] == "mock-chat"
    assert sent["max_tokens"] == 256
    assert mock_upstream.headers_seen[-1]["authorization"] == "Bearer upstream-secret"


async def test_max_tokens_is_always_sent_upstream(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    await client.post(URL, json=CHAT, headers=key["headers"])
    assert mock_upstream.requests[-1]["body"]["max_tokens"] == 256
    await client.post(URL, json={**CHAT, "max_completion_tokens": 5}, headers=key["headers"])
    sent = mock_upstream.requests[-1]["body"]
    assert sent["max_tokens"] == 5 and "max_completion_tokens" not in sent


async def test_stream_chunks_match_schema_and_end_with_usage_and_done(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post(URL, json=request, headers=key["headers"])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunk["model"] == "chat-model"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text.strip()
    final = chunks[-1]
    assert final["choices"] == []
    usage = final["usage"]
    cost = usage["prompt_tokens"] * 1000 + usage["completion_tokens"] * 2000
    assert usage["cost_usd"] == format(cost / 1e9, ".9f").rstrip("0")
    [row] = await usage_rows(app)
    assert row.streamed and row.status == "success" and row.cost_nanousd == cost


async def test_stream_without_include_usage_has_no_usage_chunk_but_is_billed(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    response = await client.post(URL, json={**CHAT, "stream": True}, headers=key["headers"])
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in chunk and chunk["choices"] for chunk in events[:-1])
    # The gateway asked the upstream for usage anyway, to bill it.
    assert mock_upstream.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    [row] = await usage_rows(app)
    assert row.completion_tokens == 12 and row.cost_nanousd > 0


async def test_invalid_requests_get_openai_shaped_400(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    key = await key_for(actors)
    cases = [
        (b"{not json", None),
        (b"[]", None),
        (b'{"model": "chat-model"}', "messages"),
        (b'{"model": "chat-model", "messages": [{"content": "x"}]}', "messages.0"),
        (b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "n": 0}', "n"),
        (
            b'{"model": "chat-model", "messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}',
            "max_tokens",
        ),
        (b'{"model": "embed-model", "messages": [{"role": "user", "content": "x"}]}', "model"),
    ]
    for raw, param in cases:
        response = await client.post(
            URL, content=raw, headers={**key["headers"], "content-type": "application/json"}
        )
        assert response.status_code == 400, raw
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == param, raw
        assert_valid("ErrorResponse", response.json())


async def test_policy_scopes_models_and_confidential_only(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    no_chat = await key_for(actors, scopes=["llm.embeddings"])
    response = await client.post(URL, json=CHAT, headers=no_chat["headers"])
    assert response.status_code == 403 and response.json()["error"]["code"] == "insufficient_scope"

    limited = await key_for(actors, allowed_models=["confidential-model"])
    response = await client.post(URL, json=CHAT, headers=limited["headers"])
    assert response.status_code == 403 and response.json()["error"]["code"] == "model_not_allowed"

    confidential = await key_for(actors, confidential_only=True)
    response = await client.post(URL, json=CHAT, headers=confidential["headers"])
    assert response.status_code == 403 and response.json()["error"]["code"] == "confidential_only"
    response = await client.post(
        URL, json={**CHAT, "model": "confidential-model"}, headers=confidential["headers"]
    )
    assert response.status_code == 200 and response.json()["model"] == "confidential-model"

    unknown = await client.post(URL, json={**CHAT, "model": "nope"}, headers=limited["headers"])
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    assert mock_upstream.total_requests == 1


async def test_budget_exhausted_is_openai_insufficient_quota(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    await add_budget(app, key, 1000, key=True)  # one micro-dollar: less than the worst case
    response = await client.post(URL, json=CHAT, headers=key["headers"])
    assert response.status_code == 429
    assert response.json()["error"] == {
        "message": response.json()["error"]["message"],
        "type": "insufficient_quota",
        "param": None,
        "code": "insufficient_quota",
    }
    assert mock_upstream.total_requests == 0
    assert await usage_rows(app) == []


async def test_no_prompt_or_completion_text_in_logs(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator, caplog: Any
) -> None:
    import logging

    caplog.set_level(logging.DEBUG)
    key = await key_for(actors)
    secret_prompt = "my-very-private-prompt-4711"
    await client.post(
        URL,
        json={**CHAT, "messages": [{"role": "user", "content": secret_prompt}]},
        headers=key["headers"],
    )
    await client.post(
        URL,
        json={
            **CHAT,
            "model": "broken-model",
            "messages": [{"role": "user", "content": secret_prompt}],
        },
        headers=key["headers"],
    )
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert secret_prompt not in logged
    assert "simulated" not in logged  # completion text
    assert key["key"] not in logged


async def test_answers_go_out_before_settlement_until_too_many_are_queued(
    app: Any,
    client: httpx.AsyncClient,
    actors: Actors,
    mock_upstream: Simulator,
    monkeypatch: Any,
) -> None:
    """Settlements are written behind the answer; with more queued than the bound (a stuck
    database), a caller waits for its own instead of the backlog growing."""
    import asyncio

    from enclava.budgets import service as budgets
    from enclava.llm import metering

    key = await key_for(actors)
    gate = asyncio.Event()
    real = budgets.settle_many

    async def stuck(factory: Any, items: Any, **kwargs: Any) -> Any:
        await gate.wait()
        return await real(factory, items, **kwargs)

    monkeypatch.setattr(budgets, "settle_many", stuck)
    answered = await client.post(URL, json=CHAT, headers=key["headers"])
    assert answered.status_code == 200  # the write is stuck, the answer is not

    monkeypatch.setattr(metering, "MAX_SETTLEMENTS_IN_FLIGHT", 1)
    waiting = asyncio.create_task(client.post(URL, json=CHAT, headers=key["headers"]))
    await asyncio.sleep(0.5)
    assert not waiting.done()  # two queued: this caller waits for its own write
    gate.set()
    assert (await waiting).status_code == 200
    rows = await usage_rows(app)
    assert [r.status for r in rows] == ["success", "success"]
