"""The internal chatbot and prompt-template API, against the real app."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import select

from enclava.db import transaction
from enclava.models import (
    AuditLog,
    ChatbotConversation,
    ChatbotInstance,
    ChatbotMessage,
    PromptTemplate,
    RagCollection,
)
from tests.conftest import Actors

BOTS = "/api-internal/v1/chatbots"
TEMPLATES = "/api-internal/v1/prompt-templates"


async def create_bot(
    client: httpx.AsyncClient, user: dict[str, Any], **fields: Any
) -> dict[str, Any]:
    body = {"name": "Helper", "model": "chat-model", **fields}
    response = await client.post(BOTS, json=body, headers=user["headers"])
    assert response.status_code == 201, response.text
    return response.json()


async def builtin(client: httpx.AsyncClient, user: dict[str, Any], key: str) -> dict[str, Any]:
    response = await client.get(TEMPLATES, headers=user["headers"])
    assert response.status_code == 200
    return next(t for t in response.json() if t["builtin_key"] == key)


async def add_conversation(app: Any, bot: dict[str, Any], texts: list[str]) -> uuid.UUID:
    async with transaction(app.state.enclava.session_factory) as session:
        conversation = ChatbotConversation(
            chatbot_id=uuid.UUID(bot["id"]), user_id=uuid.UUID(bot["user_id"]), title=texts[0]
        )
        session.add(conversation)
        await session.flush()
        for i, text in enumerate(texts):
            session.add(
                ChatbotMessage(
                    conversation_id=conversation.id,
                    position=i,
                    role="user" if i % 2 == 0 else "assistant",
                    content=text,
                    token_count=3,
                )
            )
        return conversation.id


async def test_create_uses_the_builtin_template_of_its_type(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    bot = await create_bot(
        client, user, type="customer_support", template_variables={"company_name": "Acme"}
    )
    support = await builtin(client, user, "customer_support")
    assert bot["prompt_template_id"] == support["id"]
    assert bot["system_prompt"] is None
    assert bot["template_variables"] == {"company_name": "Acme"}
    assert (bot["temperature"], bot["max_tokens"], bot["memory_messages"], bot["top_k"]) == (
        0.7,
        1000,
        10,
        5,
    )

    rendered = await client.post(
        f"{TEMPLATES}/{support['id']}/render",
        json={"variables": {"company_name": "Acme"}},
        headers=user["headers"],
    )
    assert rendered.status_code == 200
    assert "customer support agent for Acme" in rendered.json()["text"]

    fetched = await client.get(f"{BOTS}/{bot['id']}", headers=user["headers"])
    assert fetched.json() == bot
    listed = await client.get(BOTS, headers=user["headers"])
    assert [b["id"] for b in listed.json()] == [bot["id"]]


async def test_prompt_choices_are_validated(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    headers = user["headers"]
    custom = await client.post(
        BOTS, json={"name": "c", "model": "chat-model", "type": "custom"}, headers=headers
    )
    assert custom.status_code == 400 and custom.json()["code"] == "missing_prompt"

    literal = await create_bot(client, user, type="custom", system_prompt="You are terse.")
    assert literal["system_prompt"] == "You are terse." and literal["prompt_template_id"] is None

    typo = await client.post(
        BOTS,
        json={
            "name": "t",
            "model": "chat-model",
            "type": "teacher",
            "template_variables": {"subjct": "math"},
        },
        headers=headers,
    )
    assert typo.status_code == 400
    assert typo.json()["code"] == "unknown_template_variables" and "subjct" in typo.json()["detail"]

    teacher = await builtin(client, user, "teacher")
    both = await client.post(
        BOTS,
        json={
            "name": "b",
            "model": "chat-model",
            "system_prompt": "x",
            "prompt_template_id": teacher["id"],
        },
        headers=headers,
    )
    assert both.status_code == 400 and both.json()["code"] == "conflicting_prompt"

    stray = await client.post(
        BOTS,
        json={
            "name": "s",
            "model": "chat-model",
            "system_prompt": "x",
            "template_variables": {"a": "b"},
        },
        headers=headers,
    )
    assert stray.status_code == 400


async def test_malformed_input_is_a_422_not_a_500(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    for body in (
        {"name": "x", "model": "chat-model", "temperature": 5},
        {"name": "x", "model": "chat-model", "type": "pirate"},
        {"name": "", "model": "chat-model"},
        {"name": "x"},
        {"name": "x", "model": "chat-model", "memory_messages": -1},
        {"name": "x", "model": "chat-model", "unexpected": True},
        {"name": "x", "model": "chat-model", "rag_collection_id": "not-a-uuid"},
    ):
        response = await client.post(BOTS, json=body, headers=user["headers"])
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    bad_id = await client.get(f"{BOTS}/123", headers=user["headers"])
    assert bad_id.status_code == 422


async def test_other_users_chatbots_and_conversations_are_not_found(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    alice, bob = await actors.user(), await actors.user()
    bot = await create_bot(client, alice)
    conversation_id = await add_conversation(app, bot, ["hello", "hi there"])
    bob_headers = bob["headers"]
    requests = [
        client.get(f"{BOTS}/{bot['id']}", headers=bob_headers),
        client.patch(f"{BOTS}/{bot['id']}", json={"name": "mine"}, headers=bob_headers),
        client.delete(f"{BOTS}/{bot['id']}", headers=bob_headers),
        client.get(f"{BOTS}/{bot['id']}/conversations", headers=bob_headers),
        client.get(f"{BOTS}/{bot['id']}/conversations/{conversation_id}", headers=bob_headers),
        client.delete(f"{BOTS}/{bot['id']}/conversations/{conversation_id}", headers=bob_headers),
    ]
    for pending in requests:
        response = await pending
        assert response.status_code == 404, response.request.url
    # Bob's own chatbot does not open Alice's conversation either.
    bobs = await create_bot(client, bob)
    cross = await client.get(
        f"{BOTS}/{bobs['id']}/conversations/{conversation_id}", headers=bob_headers
    )
    assert cross.status_code == 404
    assert (await client.get(BOTS, headers=bob_headers)).json() == [bobs]
    still = await client.get(
        f"{BOTS}/{bot['id']}/conversations/{conversation_id}", headers=alice["headers"]
    )
    assert still.status_code == 200


async def test_admins_list_everyones_chatbots_but_users_cannot(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    admin, alice, bob = await actors.user(role="admin"), await actors.user(), await actors.user()
    a = await create_bot(client, alice, name="a")
    b = await create_bot(client, bob, name="b")
    everyone = await client.get(BOTS, params={"all": "true"}, headers=admin["headers"])
    assert {x["id"] for x in everyone.json()} == {a["id"], b["id"]}
    only_bob = await client.get(BOTS, params={"user_id": bob["id"]}, headers=admin["headers"])
    assert [x["id"] for x in only_bob.json()] == [b["id"]]
    assert (await client.get(BOTS, headers=admin["headers"])).json() == []
    assert (await client.get(f"{BOTS}/{a['id']}", headers=admin["headers"])).status_code == 200
    # Viewing is not owning: conversations and changes stay with the owner.
    assert (
        await client.get(f"{BOTS}/{a['id']}/conversations", headers=admin["headers"])
    ).status_code == 404
    assert (
        await client.patch(f"{BOTS}/{a['id']}", json={"name": "x"}, headers=admin["headers"])
    ).status_code == 404
    refused = await client.get(BOTS, params={"all": "true"}, headers=alice["headers"])
    assert refused.status_code == 403


async def test_patch_changes_settings_and_prompt_source(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    headers = user["headers"]
    bot = await create_bot(
        client, user, type="teacher", template_variables={"subject": "chemistry"}
    )
    url = f"{BOTS}/{bot['id']}"

    patched = (
        await client.patch(url, json={"temperature": 0.2, "memory_tokens": 2000}, headers=headers)
    ).json()
    assert (patched["temperature"], patched["memory_tokens"]) == (0.2, 2000)
    assert patched["template_variables"] == {"subject": "chemistry"}

    # Following the type's built-in: a new type means the new type's built-in.
    switched = (await client.patch(url, json={"type": "researcher"}, headers=headers)).json()
    assert switched["prompt_template_id"] == (await builtin(client, user, "researcher"))["id"]
    assert switched["template_variables"] == {}

    literal = (
        await client.patch(url, json={"system_prompt": "Only haiku."}, headers=headers)
    ).json()
    assert literal["system_prompt"] == "Only haiku." and literal["prompt_template_id"] is None

    back = (await client.patch(url, json={"system_prompt": None}, headers=headers)).json()
    assert back["system_prompt"] is None
    assert back["prompt_template_id"] == (await builtin(client, user, "researcher"))["id"]

    cleared = await client.patch(url, json={"memory_tokens": None}, headers=headers)
    assert cleared.json()["memory_tokens"] is None
    null_name = await client.patch(url, json={"name": None}, headers=headers)
    assert null_name.status_code == 422
    bad_vars = await client.patch(url, json={"template_variables": {"nope": "x"}}, headers=headers)
    assert bad_vars.status_code == 400


async def test_rag_collection_must_be_readable(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    alice, bob = await actors.user(), await actors.user()
    async with transaction(app.state.enclava.session_factory) as session:
        collection = RagCollection(user_id=alice["id"], name="docs", qdrant_collection_name="c1")
        session.add(collection)
        await session.flush()
        collection_id = str(collection.id)
    mine = await create_bot(
        client, alice, rag_collection_id=collection_id, top_k=3, score_threshold=0.5
    )
    assert mine["rag_collection_id"] == collection_id
    assert (mine["top_k"], mine["score_threshold"], mine["search_mode"]) == (3, 0.5, "hybrid")
    dense = await client.patch(
        f"{BOTS}/{mine['id']}", json={"search_mode": "dense"}, headers=alice["headers"]
    )
    assert dense.json()["search_mode"] == "dense"
    fuzzy = await client.patch(
        f"{BOTS}/{mine['id']}", json={"search_mode": "fuzzy"}, headers=alice["headers"]
    )
    assert fuzzy.status_code == 422
    theirs = await client.post(
        BOTS,
        json={"name": "x", "model": "chat-model", "rag_collection_id": collection_id},
        headers=bob["headers"],
    )
    assert theirs.status_code == 404 and theirs.json()["code"] == "collection_not_found"
    bobs = await create_bot(client, bob)
    patched = await client.patch(
        f"{BOTS}/{bobs['id']}", json={"rag_collection_id": collection_id}, headers=bob["headers"]
    )
    assert patched.status_code == 404


async def test_delete_chatbot_removes_its_conversations_and_is_audited(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    bot = await create_bot(client, user)
    conversation_id = await add_conversation(app, bot, ["q", "a"])
    deleted = await client.delete(f"{BOTS}/{bot['id']}", headers=user["headers"])
    assert deleted.status_code == 204
    assert (await client.get(f"{BOTS}/{bot['id']}", headers=user["headers"])).status_code == 404
    async with transaction(app.state.enclava.session_factory) as session:
        assert await session.get(ChatbotConversation, conversation_id) is None
        leftover = await session.execute(
            select(ChatbotMessage).where(ChatbotMessage.conversation_id == conversation_id)
        )
        assert leftover.first() is None
        actions = (
            await session.execute(
                select(AuditLog.action, AuditLog.resource_id).where(
                    AuditLog.resource_type == "chatbot"
                )
            )
        ).all()
    assert sorted(actions) == [("chatbot.create", bot["id"]), ("chatbot.delete", bot["id"])]


async def test_conversation_list_history_and_delete(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    headers = user["headers"]
    bot = await create_bot(client, user)
    first = await add_conversation(app, bot, ["one", "two", "three", "four"])
    second = await add_conversation(app, bot, ["later"])
    listed = (await client.get(f"{BOTS}/{bot['id']}/conversations", headers=headers)).json()
    assert [(c["id"], c["message_count"]) for c in listed] == [(str(second), 1), (str(first), 4)]

    history = (
        await client.get(f"{BOTS}/{bot['id']}/conversations/{first}", headers=headers)
    ).json()
    assert [(m["role"], m["content"]) for m in history["messages"]] == [
        ("user", "one"),
        ("assistant", "two"),
        ("user", "three"),
        ("assistant", "four"),
    ]
    page = await client.get(
        f"{BOTS}/{bot['id']}/conversations/{first}",
        params={"offset": 1, "limit": 2},
        headers=headers,
    )
    assert [m["content"] for m in page.json()["messages"]] == ["two", "three"]
    assert page.json()["message_count"] == 4

    gone = await client.delete(f"{BOTS}/{bot['id']}/conversations/{first}", headers=headers)
    assert gone.status_code == 204
    again = await client.get(f"{BOTS}/{bot['id']}/conversations/{first}", headers=headers)
    assert again.status_code == 404
    remaining = (await client.get(f"{BOTS}/{bot['id']}/conversations", headers=headers)).json()
    assert [c["id"] for c in remaining] == [str(second)]


async def test_template_library_crud_and_ownership(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    alice, bob = await actors.user(), await actors.user()
    listed = (await client.get(TEMPLATES, headers=alice["headers"])).json()
    assert {t["builtin_key"] for t in listed} == {
        "assistant",
        "customer_support",
        "teacher",
        "researcher",
        "creative_writer",
    }
    created = await client.post(
        TEMPLATES,
        json={
            "name": "Pirate",
            "template": "Talk like a pirate about {{topic}} to {{ audience }}.",
            "variables": [{"name": "audience", "default": "landlubbers"}],
        },
        headers=alice["headers"],
    )
    assert created.status_code == 201, created.text
    template = created.json()
    assert template["user_id"] == str(alice["id"]) and template["builtin_key"] is None
    assert [(v["name"], v["default"]) for v in template["variables"]] == [
        ("topic", None),
        ("audience", "landlubbers"),
    ]
    url = f"{TEMPLATES}/{template['id']}"
    rendered = await client.post(
        f"{url}/render", json={"variables": {"topic": "ships"}}, headers=alice["headers"]
    )
    assert rendered.json()["text"] == "Talk like a pirate about ships to landlubbers."
    missing = await client.post(f"{url}/render", json={"variables": {}}, headers=alice["headers"])
    assert missing.status_code == 400 and missing.json()["code"] == "missing_template_variables"

    unused = await client.post(
        TEMPLATES,
        json={"name": "x", "template": "plain", "variables": [{"name": "ghost"}]},
        headers=alice["headers"],
    )
    assert unused.status_code == 400 and unused.json()["code"] == "invalid_template"

    assert (await client.get(url, headers=bob["headers"])).status_code == 404
    assert (await client.patch(url, json={"name": "y"}, headers=bob["headers"])).status_code == 404
    assert (await client.delete(url, headers=bob["headers"])).status_code == 404
    bob_bot = await client.post(
        BOTS,
        json={
            "name": "b",
            "model": "chat-model",
            "prompt_template_id": template["id"],
            "template_variables": {"topic": "x"},
        },
        headers=bob["headers"],
    )
    assert bob_bot.status_code == 404
    assert template["id"] not in {
        t["id"] for t in (await client.get(TEMPLATES, headers=bob["headers"])).json()
    }

    renamed = await client.patch(
        url, json={"name": "Captain", "template": "Arr, {{topic}}!"}, headers=alice["headers"]
    )
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "Captain"
    assert [v["name"] for v in renamed.json()["variables"]] == ["topic"]
    assert (await client.delete(url, headers=alice["headers"])).status_code == 204
    assert (await client.get(url, headers=alice["headers"])).status_code == 404


async def test_templates_in_use_are_protected(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    headers = user["headers"]
    template = (
        await client.post(
            TEMPLATES, json={"name": "T", "template": "About {{topic}}."}, headers=headers
        )
    ).json()
    bot = await create_bot(
        client, user, prompt_template_id=template["id"], template_variables={"topic": "tides"}
    )
    assert bot["prompt_template_id"] == template["id"]
    url = f"{TEMPLATES}/{template['id']}"
    in_use = await client.delete(url, headers=headers)
    assert in_use.status_code == 409 and in_use.json()["code"] == "template_in_use"
    breaking = await client.patch(
        url, json={"template": "About {{topic}} for {{reader}}."}, headers=headers
    )
    assert breaking.status_code == 409
    compatible = await client.patch(
        url,
        json={
            "template": "About {{topic}} for {{reader}}.",
            "variables": [{"name": "reader", "default": "all"}],
        },
        headers=headers,
    )
    assert compatible.status_code == 200
    dropping = await client.patch(url, json={"template": "About the sea."}, headers=headers)
    assert dropping.status_code == 409


async def test_builtins_are_edited_by_admins_only_and_never_deleted(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    admin, user = await actors.user(role="admin"), await actors.user()
    assistant = await builtin(client, user, "assistant")
    url = f"{TEMPLATES}/{assistant['id']}"
    refused = await client.patch(url, json={"name": "Mine"}, headers=user["headers"])
    assert refused.status_code == 403 and refused.json()["code"] == "builtin_template"
    edited = await client.patch(
        url,
        json={"template": "You are {{assistant_name}}. Be kind."},
        headers=admin["headers"],
    )
    assert edited.status_code == 200
    # The admin's edit kept the variable's default and is what everyone sees afterwards.
    assert edited.json()["variables"][0]["default"] == "Assistant"
    seen = await builtin(client, user, "assistant")
    assert seen["template"] == "You are {{assistant_name}}. Be kind."
    assert (await client.delete(url, headers=admin["headers"])).status_code == 403


async def test_deleting_a_user_removes_their_chatbots_templates_and_conversations(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin, user = await actors.user(role="admin"), await actors.user()
    template = (
        await client.post(
            TEMPLATES, json={"name": "T", "template": "About {{topic}}."}, headers=user["headers"]
        )
    ).json()
    bot = await create_bot(
        client, user, prompt_template_id=template["id"], template_variables={"topic": "x"}
    )
    conversation_id = await add_conversation(app, bot, ["q", "a"])
    deleted = await client.delete(f"/api-internal/v1/users/{user['id']}", headers=admin["headers"])
    assert deleted.status_code == 204, deleted.text
    async with transaction(app.state.enclava.session_factory) as session:
        assert await session.get(ChatbotConversation, conversation_id) is None
        assert await session.get(ChatbotInstance, uuid.UUID(bot["id"])) is None
        assert await session.get(PromptTemplate, uuid.UUID(template["id"])) is None
