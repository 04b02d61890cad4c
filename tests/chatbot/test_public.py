"""Talking to chatbots through the metered gateway, with the mock upstream behind it."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import orjson
from sqlalchemy import update

from enclava.budgets.periods import period_start
from enclava.budgets.service import invalidate_owner
from enclava.chatbot.schemas import InteractResponse
from enclava.db import transaction
from enclava.kit.time import utcnow
from enclava.models import Budget, ChatbotInstance
from enclava.testing.mock_upstream import Simulator
from tests.conftest import TEST_SECRET, Actors, StartApp
from tests.llm.helpers import usage_rows

BOTS = "/api-internal/v1/chatbots"
INTERACT = "/api/v1/chatbot/interact"


def sse(text: str) -> list[Any]:
    return [
        line[6:] if line[6:] == "[DONE]" else orjson.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ")
    ]


async def setup_bot(
    client: httpx.AsyncClient,
    actors: Actors,
    *,
    scopes: tuple[str, ...] = ("chatbot.use",),
    **fields: Any,
) -> dict[str, Any]:
    owner = await actors.user()
    body = {
        "name": "Bot",
        "model": "chat-model",
        "type": "custom",
        "system_prompt": "Be exact.",
        **fields,
    }
    created = await client.post(BOTS, json=body, headers=owner["headers"])
    assert created.status_code == 201, created.text
    key = await actors.api_key(owner, scopes=list(scopes))
    return {"owner": owner, "bot": created.json(), "key": key, "id": created.json()["id"]}


async def add_budget(app: Any, *, api_key_id: uuid.UUID, limit_nanousd: int) -> None:
    async with transaction(app.state.enclava.session_factory) as session:
        session.add(
            Budget(
                name="test",
                api_key_id=api_key_id,
                period="monthly",
                limit_nanousd=limit_nanousd,
                spent_nanousd=0,
                period_started_at=period_start("monthly", utcnow()),
            )
        )
    # As every writer of budgets does after its commit (the key may have been used already).
    await invalidate_owner(app.state.enclava, api_key_id=api_key_id)


def upstream_messages(upstream: Simulator) -> list[list[dict[str, Any]]]:
    return [
        r["body"]["messages"] for r in upstream.requests if r["path"].endswith("/chat/completions")
    ]


async def test_interact_continues_a_conversation_within_the_memory_window(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors, memory_messages=2)
    headers = setup["key"]["headers"]
    first = await client.post(
        INTERACT, json={"chatbot_id": setup["id"], "message": "one"}, headers=headers
    )
    assert first.status_code == 200, first.text
    body = first.json()
    InteractResponse.model_validate(body)
    conversation_id = body["conversation_id"]
    assert body["response"] and body["sources"] == [] and body["refused"] is False
    assert first.headers["x-conversation-id"] == conversation_id
    answers = [body["response"]]
    for message in ("two", "three"):
        reply = await client.post(
            INTERACT,
            json={
                "chatbot_id": setup["id"],
                "message": message,
                "conversation_id": conversation_id,
            },
            headers=headers,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["conversation_id"] == conversation_id
        answers.append(reply.json()["response"])

    sent = upstream_messages(upstream)
    assert sent[0] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "one"},
    ]
    # memory_messages=2: exactly the previous question and answer, nothing older.
    assert sent[2] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": answers[1]},
        {"role": "user", "content": "three"},
    ]
    history = await client.get(
        f"{BOTS}/{setup['id']}/conversations/{conversation_id}", headers=setup["owner"]["headers"]
    )
    assert [m["content"] for m in history.json()["messages"]] == [
        "one",
        answers[0],
        "two",
        answers[1],
        "three",
        answers[2],
    ]
    rows = await usage_rows(app)
    assert [(r.endpoint, r.status, r.api_key_id) for r in rows] == [
        ("chatbot.interact", "success", setup["key"]["id"])
    ] * 3
    assert all(r.prompt_tokens > 0 and r.cost_nanousd > 0 for r in rows)


async def test_scope_ownership_and_conversations_are_enforced(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    alice = await setup_bot(client, actors)
    bob = await setup_bot(client, actors)
    started = await client.post(
        INTERACT,
        json={"chatbot_id": alice["id"], "message": "private"},
        headers=alice["key"]["headers"],
    )
    conversation_id = started.json()["conversation_id"]

    no_scope = await actors.api_key(alice["owner"], scopes=["llm.chat"])
    refused = await client.post(
        INTERACT, json={"chatbot_id": alice["id"], "message": "x"}, headers=no_scope["headers"]
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "insufficient_scope"

    others_bot = await client.post(
        INTERACT, json={"chatbot_id": alice["id"], "message": "x"}, headers=bob["key"]["headers"]
    )
    assert others_bot.status_code == 404
    assert others_bot.json()["error"]["code"] == "chatbot_not_found"
    others_conversation = await client.post(
        INTERACT,
        json={"chatbot_id": bob["id"], "message": "x", "conversation_id": conversation_id},
        headers=bob["key"]["headers"],
    )
    assert others_conversation.status_code == 404
    assert others_conversation.json()["error"]["code"] == "conversation_not_found"
    openai_shape = await client.post(
        f"/api/v1/chatbot/{alice['id']}/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "x"}]},
        headers=bob["key"]["headers"],
    )
    assert openai_shape.status_code == 404
    # Someone else's chatbot is a 404 even with a body that would be a 400.
    garbage = await client.post(
        f"/api/v1/chatbot/{alice['id']}/chat/completions",
        content=b"not json",
        headers=bob["key"]["headers"],
    )
    assert garbage.status_code == 404
    assert garbage.json()["error"]["code"] == "chatbot_not_found"
    jwt = await client.post(
        INTERACT,
        json={"chatbot_id": alice["id"], "message": "x"},
        headers=alice["owner"]["headers"],
    )
    assert jwt.status_code == 401
    malformed = await client.post(
        INTERACT, json={"chatbot_id": "nope", "message": ""}, headers=alice["key"]["headers"]
    )
    assert malformed.status_code == 400 and "error" in malformed.json()
    assert len(upstream_messages(upstream)) == 1


async def test_exhausted_budget_is_insufficient_quota_and_records_nothing(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    await add_budget(app, api_key_id=setup["key"]["id"], limit_nanousd=1000)
    response = await client.post(
        INTERACT,
        json={"chatbot_id": setup["id"], "message": "hello"},
        headers=setup["key"]["headers"],
    )
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "insufficient_quota"
    streamed = await client.post(
        INTERACT,
        json={"chatbot_id": setup["id"], "message": "hello", "stream": True},
        headers=setup["key"]["headers"],
    )
    assert streamed.status_code == 429
    assert upstream_messages(upstream) == []
    conversations = await client.get(
        f"{BOTS}/{setup['id']}/conversations", headers=setup["owner"]["headers"]
    )
    assert conversations.json() == []


async def test_rate_limits_apply_to_chatbot_traffic(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    key = await actors.api_key(setup["owner"], scopes=["chatbot.use"], rate_limit_per_minute=2)
    body = {"chatbot_id": setup["id"], "message": "hi"}
    for _ in range(2):
        allowed = await client.post(INTERACT, json=body, headers=key["headers"])
        assert allowed.status_code == 200, allowed.text
        assert allowed.headers["x-ratelimit-limit"] == "2"
    refused = await client.post(
        f"/api/v1/chatbot/{setup['id']}/chat/completions",
        json={"model": "x", "messages": [{"role": "user", "content": "hi"}]},
        headers=key["headers"],
    )
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert len(upstream_messages(upstream)) == 2


async def test_confidential_only_chatbots_refuse_other_models(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    owner = await actors.user()
    headers = owner["headers"]
    refused = await client.post(
        BOTS,
        json={"name": "c", "model": "chat-model", "system_prompt": "x", "confidential_only": True},
        headers=headers,
    )
    assert refused.status_code == 400 and refused.json()["code"] == "model_not_confidential"
    # A model the gateway does not know is accepted, and refused by the gateway when called.
    unknown = await client.post(
        BOTS, json={"name": "c", "model": "no-such-model", "system_prompt": "x"}, headers=headers
    )
    assert unknown.status_code == 201
    caller = await actors.api_key(owner, scopes=["chatbot.use"])
    missing = await client.post(
        INTERACT,
        json={"chatbot_id": unknown.json()["id"], "message": "hi"},
        headers=caller["headers"],
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    bot = (
        await client.post(
            BOTS,
            json={
                "name": "c",
                "model": "private-model",
                "system_prompt": "x",
                "confidential_only": True,
            },
            headers=headers,
        )
    ).json()
    switch = await client.patch(
        f"{BOTS}/{bot['id']}", json={"model": "chat-model"}, headers=headers
    )
    assert switch.status_code == 400 and switch.json()["code"] == "model_not_confidential"
    key = await actors.api_key(owner, scopes=["chatbot.use"])
    ok = await client.post(
        INTERACT, json={"chatbot_id": bot["id"], "message": "hi"}, headers=key["headers"]
    )
    assert ok.status_code == 200, ok.text

    # The registry changed under the chatbot: the gateway's confidential-only policy holds at
    # call time, before anything reaches the upstream.
    async with transaction(app.state.enclava.session_factory) as session:
        await session.execute(
            update(ChatbotInstance)
            .where(ChatbotInstance.id == uuid.UUID(bot["id"]))
            .values(model="chat-model")
        )
    before = len(upstream_messages(upstream))
    at_call = await client.post(
        INTERACT, json={"chatbot_id": bot["id"], "message": "hi"}, headers=key["headers"]
    )
    assert at_call.status_code == 403
    assert at_call.json()["error"]["code"] == "confidential_only"
    assert len(upstream_messages(upstream)) == before


async def test_confidential_only_key_cannot_use_a_non_confidential_chatbot(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    key = await actors.api_key(setup["owner"], scopes=["chatbot.use"], confidential_only=True)
    response = await client.post(
        INTERACT, json={"chatbot_id": setup["id"], "message": "hi"}, headers=key["headers"]
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "confidential_only"


async def test_a_key_limited_to_other_models_cannot_use_the_chatbot(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    key = await actors.api_key(
        setup["owner"], scopes=["chatbot.use"], allowed_models=["small-model"]
    )
    response = await client.post(
        INTERACT, json={"chatbot_id": setup["id"], "message": "hi"}, headers=key["headers"]
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"
    assert upstream_messages(upstream) == []


async def test_interact_streams_sse_and_records_the_turn(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    response = await client.post(
        INTERACT,
        json={"chatbot_id": setup["id"], "message": "stream please", "stream": True},
        headers=setup["key"]["headers"],
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    assert events[0]["type"] == "start" and events[-1] == "[DONE]"
    deltas = [e["content"] for e in events if isinstance(e, dict) and e["type"] == "delta"]
    done = events[-2]
    assert done["type"] == "done" and len(deltas) > 1
    assert done["response"] == "".join(deltas)
    assert (
        done["conversation_id"]
        == events[0]["conversation_id"]
        == response.headers["x-conversation-id"]
    )
    assert done["usage"]["completion_tokens"] > 0
    history = await client.get(
        f"{BOTS}/{setup['id']}/conversations/{done['conversation_id']}",
        headers=setup["owner"]["headers"],
    )
    assert [m["content"] for m in history.json()["messages"]] == ["stream please", done["response"]]
    [row] = await usage_rows(app)
    assert (row.endpoint, row.status, row.streamed) == ("chatbot.interact", "success", True)


async def test_broken_upstream_stream_ends_with_an_error_event(
    client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors, model="dropping-model")
    response = await client.post(
        INTERACT,
        json={"chatbot_id": setup["id"], "message": "hi", "stream": True},
        headers=setup["key"]["headers"],
    )
    events = sse(response.text)
    assert events[0]["type"] == "start"
    assert events[-1]["type"] == "error"
    assert "done" not in [e["type"] for e in events]
    assert events[-1]["error"]["code"]
    listed = await client.get(
        f"{BOTS}/{setup['id']}/conversations", headers=setup["owner"]["headers"]
    )
    assert listed.json() == []


async def test_dashboard_users_chat_with_their_own_chatbots(
    app: Any, client: httpx.AsyncClient, actors: Actors, upstream: Simulator
) -> None:
    setup = await setup_bot(client, actors)
    reply = await client.post(
        f"{BOTS}/{setup['id']}/chat", json={"message": "hi"}, headers=setup["owner"]["headers"]
    )
    assert reply.status_code == 200, reply.text
    assert reply.json()["response"]
    other = await actors.user()
    hidden = await client.post(
        f"{BOTS}/{setup['id']}/chat", json={"message": "hi"}, headers=other["headers"]
    )
    assert hidden.status_code == 404
    [row] = await usage_rows(app)
    assert (row.endpoint, row.user_id, row.api_key_id) == (
        "chatbot.chat",
        setup["owner"]["id"],
        None,
    )


async def test_an_unreachable_budget_store_refuses_calls_with_503(
    make_app: StartApp, upstream: Simulator
) -> None:
    """Fail closed: an instance whose Redis is down reserves nothing and calls no model."""
    from enclava.auth import service as auth
    from enclava.auth.tokens import create_access_token

    # A port where nothing listens; rate limits off, so the budget is the first to need Redis.
    app, client = await make_app(redis_url="redis://127.0.0.1:9/0", rate_limit_enabled=False)
    async with transaction(app.state.enclava.session_factory) as session:
        user = await auth.create_user(session, email="b@example.com", password="long enough")
        user_id = user.id
    headers = {"Authorization": f"Bearer {create_access_token(TEST_SECRET, user_id, 60)}"}
    created = await client.post(
        BOTS,
        json={"name": "Bot", "model": "chat-model", "type": "custom", "system_prompt": "Hi."},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    reply = await client.post(
        f"{BOTS}/{created.json()['id']}/chat", json={"message": "hi"}, headers=headers
    )
    assert reply.status_code == 503, reply.text
    assert reply.json()["code"] == "budget_store_unavailable"
    assert list(upstream.requests) == []
    assert await usage_rows(app) == []
    # A budget change is committed even so (instances pick it up when their cached budgets
    # expire); reading what is reserved needs the store.
    budgets = "/api-internal/v1/budgets"
    capped = await client.post(budgets, json={"name": "cap", "limit_usd": 1}, headers=headers)
    assert capped.status_code == 201
    listed = await client.get(budgets, headers=headers)
    assert listed.status_code == 503
    assert listed.json()["code"] == "budget_store_unavailable"
