"""The official openai SDK (sync, async, streaming) against a real Enclava server on loopback."""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from enclava.app import create_app
from enclava.config import Settings
from enclava.testing.mock_upstream import Simulator
from enclava.testing.server import serve_in_thread
from tests.conftest import Actors
from tests.llm.conftest import key_for
from tests.llm.helpers import add_budget, second_instance
from tests.specs.openai import assert_valid

MESSAGES: Any = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
def base_url(settings: Settings, app: Any, tmp_path: Path) -> Iterator[str]:
    # A second app instance on the same database, served by uvicorn in a thread.
    with serve_in_thread(create_app(second_instance(settings, tmp_path))) as url:
        yield url + "/api/v1"


def sdk(base_url: str, key: dict[str, Any]) -> openai.OpenAI:
    return openai.OpenAI(api_key=key["key"], base_url=base_url, max_retries=0, timeout=10)


def async_sdk(base_url: str, key: dict[str, Any]) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=key["key"], base_url=base_url, max_retries=0, timeout=10)


async def test_sync_chat_stream_embeddings_and_models(
    base_url: str, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    with sdk(base_url, key) as client:
        _sync_calls(client)


def _sync_calls(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="chat-model", messages=MESSAGES, max_tokens=5)
    assert completion.model == "chat-model"
    assert completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert_valid("CreateChatCompletionResponse", completion.model_dump(exclude_unset=True))

    raw = client.chat.completions.with_raw_response.create(model="chat-model", messages=MESSAGES)
    assert float(raw.headers["x-enclava-cost-usd"]) > 0

    chunks = list(
        client.chat.completions.create(
            model="chat-model",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.split() == completion_words(12)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12
    assert getattr(chunks[-1].usage, "cost_usd", None)

    raw_embedding = client.embeddings.with_raw_response.create(
        model="embed-model", input=["one", "two"], encoding_format="float"
    )
    assert_valid("CreateEmbeddingResponse", raw_embedding.http_response.json())
    embedding = raw_embedding.parse()
    assert [d.index for d in embedding.data] == [0, 1]
    assert len(embedding.data[0].embedding) == 8
    assert embedding.usage.prompt_tokens > 0

    assert_valid("ListModelsResponse", client.models.with_raw_response.list().http_response.json())
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert "chat-model" in ids and "embed-model" in ids
    assert client.models.retrieve("chat-model").owned_by == "mock"


def completion_words(count: int) -> list[str]:
    from enclava.testing.mock_upstream import WORDS

    return [WORDS[i % len(WORDS)] for i in range(count)]


async def test_async_chat_stream_and_base64_embeddings(
    base_url: str, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    async with async_sdk(base_url, key) as client:
        await _async_calls(client)


async def _async_calls(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(model="chat-model", messages=MESSAGES)
    assert completion.choices[0].message.content

    stream = await client.chat.completions.create(
        model="chat-model", messages=MESSAGES, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(pieces).split() == completion_words(12)

    raw = await client.embeddings.with_raw_response.create(
        model="embed-model", input="hello", encoding_format="base64"
    )
    body = raw.http_response.json()
    # The spec types embeddings as float arrays only; base64 is the documented alternative.
    assert_valid(
        "CreateEmbeddingResponse", {**body, "data": [{**body["data"][0], "embedding": []}]}
    )
    vector = struct.unpack("<8f", base64.b64decode(body["data"][0]["embedding"]))
    assert abs(sum(v * v for v in vector) - 1.0) < 1e-5
    # The SDK decodes base64 itself when asked for it.
    decoded = await client.embeddings.create(
        model="embed-model", input="hello", encoding_format="base64"
    )
    assert len(decoded.data[0].embedding) == 8 or isinstance(decoded.data[0].embedding, str)


async def test_errors_raise_the_matching_sdk_exceptions(
    app: Any, base_url: str, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors)
    no_chat = await key_for(actors, scopes=["llm.models"])
    poor = await key_for(actors)
    await add_budget(app, poor, 1, key=True)
    with (
        sdk(base_url, {"key": "ek_not-a-real-key"}) as stranger,
        sdk(base_url, no_chat) as limited,
        sdk(base_url, key) as client,
        sdk(base_url, poor) as broke,
    ):
        with pytest.raises(openai.AuthenticationError):
            stranger.models.list()
        with pytest.raises(openai.PermissionDeniedError):
            limited.chat.completions.create(model="chat-model", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="no-such-model", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("no-such-model")
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="chat-model", messages=[])
        with pytest.raises(openai.RateLimitError) as caught:
            broke.chat.completions.create(model="chat-model", messages=MESSAGES)
        assert caught.value.code == "insufficient_quota"
        with (
            pytest.raises(openai.APIError),
            client.chat.completions.create(
                model="dropping-model", messages=MESSAGES, stream=True
            ) as stream,
        ):
            list(stream)
