"""A chatbot behind the OpenAI chat-completions shape: the official SDK, streaming, continuity."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import openai
import pytest

from enclava.testing.mock_upstream import Simulator
from tests.chatbot.test_public import (
    BOTS,
    add_budget,
    setup_bot,
    sse,
    upstream_messages,
    usage_rows,
)
from tests.conftest import Actors
from tests.specs.openai import assert_valid


def url_for(bot_id: str) -> str:
    return f"/api/v1/chatbot/{bot_id}/chat/completions"


async def test_stateless_history_then_continuity_by_header(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    headers = setup["key"]["headers"]
    first = await client.post(
        url_for(setup["id"]),
        json={
            "model": "whatever",
            "messages": [
                {"role": "system", "content": "client prompt, ignored"},
                {"role": "user", "content": "I am Ada"},
                {"role": "assistant", "content": "Hi Ada"},
                {"role": "user", "content": "Who am I?"},
            ],
        },
        headers=headers,
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert body["object"] == "chat.completion" and body["model"] == "chat-model"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert (
        body["usage"]["total_tokens"]
        == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )
    conversation_id = body["conversation_id"]
    assert first.headers["x-conversation-id"] == conversation_id

    second = await client.post(
        url_for(setup["id"]),
        json={"model": "whatever", "messages": [{"role": "user", "content": "And now?"}]},
        headers={**headers, "X-Conversation-ID": conversation_id},
    )
    assert second.json()["conversation_id"] == conversation_id
    sent = upstream_messages(upstream)
    assert sent[0] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "I am Ada"},
        {"role": "assistant", "content": "Hi Ada"},
        {"role": "user", "content": "Who am I?"},
    ]
    assert sent[1][1:] == [
        {"role": "user", "content": "I am Ada"},
        {"role": "assistant", "content": "Hi Ada"},
        {"role": "user", "content": "Who am I?"},
        {"role": "assistant", "content": body["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And now?"},
    ]


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"messages": [{"role": "assistant", "content": "hi"}]}, {}),
        ({"messages": "hi"}, {}),
        ({"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}, {}),
        ({"messages": [{"role": "user", "content": "hi"}]}, {"X-Conversation-ID": "not-an-id"}),
        (
            {
                "messages": [{"role": "user", "content": "hi"}],
                "metadata": {"conversation_id": "00000000-0000-0000-0000-000000000001"},
            },
            {"X-Conversation-ID": "00000000-0000-0000-0000-000000000002"},
        ),
    ],
)
async def test_bad_requests_get_openai_shaped_400(
    client: httpx.AsyncClient,
    actors: Actors,
    upstream: Simulator,
    body: dict[str, Any],
    headers: dict[str, str],
) -> None:
    setup = await setup_bot(client, actors)
    response = await client.post(
        url_for(setup["id"]), json=body, headers={**setup["key"]["headers"], **headers}
    )
    assert response.status_code == 400, response.text
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert upstream_messages(upstream) == []


async def test_stream_chunks_with_usage(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    response = await client.post(
        url_for(setup["id"]),
        json={
            "model": "x",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        },
        headers=setup["key"]["headers"],
    )
    assert response.status_code == 200, response.text
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert all(
        c["object"] == "chat.completion.chunk" and c["model"] == "chat-model" for c in chunks
    )
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[0]["conversation_id"] == response.headers["x-conversation-id"]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert len({c["id"] for c in chunks}) == 1


async def test_openai_sdk_talks_to_a_chatbot(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator, served: str
) -> None:
    setup = await setup_bot(client, actors)
    stranger = await setup_bot(client, actors)
    async with openai.AsyncOpenAI(
        api_key=setup["key"]["key"],
        base_url=f"{served}/api/v1/chatbot/{setup['id']}",
        max_retries=0,
    ) as sdk:
        completion = await sdk.chat.completions.create(
            model="chatbot", messages=[{"role": "user", "content": "Remember the word teal."}]
        )
        answer = completion.choices[0].message.content
        assert answer and completion.model == "chat-model"
        conversation_id = (completion.model_extra or {})["conversation_id"]

        stream = await sdk.chat.completions.create(
            model="chatbot",
            messages=[{"role": "user", "content": "Which word?"}],
            metadata={"conversation_id": conversation_id},
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
        assert (chunks[0].model_extra or {})["conversation_id"] == conversation_id

        # The second turn went upstream with the first one as memory.
        assert upstream_messages(upstream)[-1][1:] == [
            {"role": "user", "content": "Remember the word teal."},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "Which word?"},
        ]
        history = await client.get(
            f"{BOTS}/{setup['id']}/conversations/{conversation_id}",
            headers=setup["owner"]["headers"],
        )
        assert [m["content"] for m in history.json()["messages"]][-2:] == [
            "Which word?",
            streamed,
        ]

        # Someone else's chatbot: the path names it, but the key's owner does not own it.
        others = sdk.with_options(base_url=f"{served}/api/v1/chatbot/{stranger['id']}")
        with pytest.raises(openai.NotFoundError):
            await others.chat.completions.create(
                model="chatbot", messages=[{"role": "user", "content": "x"}]
            )

        await add_budget(app, api_key_id=setup["key"]["id"], limit_nanousd=1000)
        with pytest.raises(openai.RateLimitError) as quota:
            await sdk.chat.completions.create(
                model="chatbot", messages=[{"role": "user", "content": "x"}]
            )
        assert quota.value.code == "insufficient_quota"


async def test_a_client_leaving_mid_stream_is_settled_and_records_nothing(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator, served: str
) -> None:
    setup = await setup_bot(client, actors, model="slow-model")
    async with openai.AsyncOpenAI(
        api_key=setup["key"]["key"],
        base_url=f"{served}/api/v1/chatbot/{setup['id']}",
        max_retries=0,
    ) as sdk:
        stream = await sdk.chat.completions.create(
            model="chatbot", messages=[{"role": "user", "content": "long story"}], stream=True
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
    for _ in range(200):
        rows = await usage_rows(app)
        if rows:
            break
        await asyncio.sleep(0.05)
    [row] = rows
    assert (row.status, row.error_code, row.streamed) == ("cancelled", "client_disconnected", True)
    assert row.completion_tokens > 0
    listed = await client.get(
        f"{BOTS}/{setup['id']}/conversations", headers=setup["owner"]["headers"]
    )
    assert listed.json() == []
