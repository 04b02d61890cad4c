"""The orchestration of one turn, with test doubles for the gateway and the retriever.

The doubles stand in for ``ChatBackend`` and ``Retriever`` only; the database, the chatbot
configuration and the conversation store are the real ones. End-to-end tests through the metered
gateway and the mock upstream live in ``test_public.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from enclava.auth.subject import AuthSubject
from enclava.chatbot import service
from enclava.chatbot.backends import (
    ChatbotBackends,
    ChatChunk,
    ChatReply,
    ModelInfo,
    RetrievedChunk,
)
from enclava.chatbot.prompting import DEFAULT_NO_SOURCES_REPLY, HistoryMessage
from enclava.db import transaction
from enclava.errors import BadRequestError, NotFoundError, QuotaExceededError
from enclava.models import ChatbotMessage, RagCollection, User
from tests.conftest import Actors

BOTS = "/api-internal/v1/chatbots"


class FakeChat:
    """Records every request; answers with a numbered reply or a scripted error."""

    def __init__(self, info: ModelInfo | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.info = info
        self.error: Exception | None = None
        self.closed = False

    async def describe_model(self, model: str) -> ModelInfo | None:
        return self.info

    async def complete(
        self, subject: AuthSubject, body: dict[str, Any], *, endpoint: str, confidential_only: bool
    ) -> ChatReply:
        self.calls.append(
            {
                "body": body,
                "endpoint": endpoint,
                "confidential_only": confidential_only,
                "subject": subject,
            }
        )
        if self.error:
            raise self.error
        return ChatReply(
            content=f"answer {len(self.calls)}",
            model=body["model"],
            prompt_tokens=11,
            completion_tokens=2,
        )

    async def stream(
        self, subject: AuthSubject, body: dict[str, Any], *, endpoint: str, confidential_only: bool
    ) -> AsyncGenerator[ChatChunk, None]:
        self.calls.append(
            {"body": body, "endpoint": endpoint, "confidential_only": confidential_only}
        )
        if self.error:
            raise self.error

        async def chunks() -> AsyncGenerator[ChatChunk, None]:
            try:
                for word in ("stre", "amed ", "answer"):
                    yield ChatChunk(content=word)
                yield ChatChunk(finish_reason="stop", prompt_tokens=9, completion_tokens=3)
            finally:
                self.closed = True

        return chunks()


class FakeRetriever:
    def __init__(self, chunks: list[RetrievedChunk]) -> None:
        self.chunks = chunks
        self.calls: list[tuple[AuthSubject, uuid.UUID, str, int, str]] = []

    async def search(
        self,
        subject: AuthSubject,
        collection_id: uuid.UUID,
        query: str,
        *,
        top_k: int,
        mode: str = "hybrid",
    ) -> list[RetrievedChunk]:
        self.calls.append((subject, collection_id, query, top_k, mode))
        return self.chunks[:top_k]


@pytest.fixture
def factory(app: Any) -> Any:
    return app.state.enclava.session_factory


async def subject_for(factory: Any, user: dict[str, Any]) -> AuthSubject:
    async with transaction(factory) as session:
        row = await session.get(User, user["id"])
        assert row is not None
        return AuthSubject(kind="user", user=row)


async def new_bot(client: httpx.AsyncClient, user: dict[str, Any], **fields: Any) -> uuid.UUID:
    body = {
        "name": "Bot",
        "model": "chat-model",
        "type": "custom",
        "system_prompt": "Be exact.",
        **fields,
    }
    response = await client.post(BOTS, json=body, headers=user["headers"])
    assert response.status_code == 201, response.text
    return uuid.UUID(response.json()["id"])


async def stored(factory: Any, conversation_id: uuid.UUID) -> list[tuple[str, str]]:
    async with transaction(factory) as session:
        rows = await session.execute(
            select(ChatbotMessage.role, ChatbotMessage.content)
            .where(ChatbotMessage.conversation_id == conversation_id)
            .order_by(ChatbotMessage.position)
        )
        return [(r[0], r[1]) for r in rows.all()]


async def test_continuity_and_memory_window(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    bot = await new_bot(client, user, memory_messages=2)
    chat = FakeChat()
    backends = ChatbotBackends(chat=chat, retriever=None)

    first = await service.run_turn(
        factory, subject, backends, chatbot_id=bot, message="one", endpoint="test"
    )
    assert chat.calls[0]["body"]["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "one"},
    ]
    assert (first.response, first.prompt_tokens, first.completion_tokens) == ("answer 1", 11, 2)
    second = await service.run_turn(
        factory,
        subject,
        backends,
        chatbot_id=bot,
        message="two",
        conversation_id=first.conversation_id,
        endpoint="test",
    )
    third = await service.run_turn(
        factory,
        subject,
        backends,
        chatbot_id=bot,
        message="three",
        conversation_id=first.conversation_id,
        endpoint="test",
    )
    assert second.conversation_id == third.conversation_id == first.conversation_id
    assert chat.calls[1]["body"]["messages"][1:] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "answer 1"},
        {"role": "user", "content": "two"},
    ]
    # memory_messages=2: exactly the last question and answer, nothing older.
    assert chat.calls[2]["body"]["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "answer 2"},
        {"role": "user", "content": "three"},
    ]
    assert chat.calls[2]["body"]["max_tokens"] == 1000
    assert chat.calls[2]["body"]["temperature"] == 0.7
    assert await stored(factory, first.conversation_id) == [
        ("user", "one"),
        ("assistant", "answer 1"),
        ("user", "two"),
        ("assistant", "answer 2"),
        ("user", "three"),
        ("assistant", "answer 3"),
    ]
    async with transaction(factory) as session:
        answer = await session.get(ChatbotMessage, third.message_id)
        assert answer is not None and answer.token_count == 2


async def test_conversations_of_others_are_not_found(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    alice, bob = await actors.user(), await actors.user()
    alice_subject, bob_subject = await subject_for(factory, alice), await subject_for(factory, bob)
    backends = ChatbotBackends(chat=FakeChat(), retriever=None)
    alice_bot = await new_bot(client, alice)
    alice_other_bot = await new_bot(client, alice)
    bob_bot = await new_bot(client, bob)
    turn = await service.run_turn(
        factory, alice_subject, backends, chatbot_id=alice_bot, message="secret", endpoint="t"
    )

    with pytest.raises(NotFoundError, match="Chatbot"):
        await service.run_turn(
            factory, bob_subject, backends, chatbot_id=alice_bot, message="x", endpoint="t"
        )
    with pytest.raises(NotFoundError, match="Conversation"):
        await service.run_turn(
            factory,
            bob_subject,
            backends,
            chatbot_id=bob_bot,
            message="x",
            conversation_id=turn.conversation_id,
            endpoint="t",
        )
    with pytest.raises(NotFoundError, match="Conversation"):
        await service.run_turn(
            factory,
            alice_subject,
            backends,
            chatbot_id=alice_other_bot,
            message="x",
            conversation_id=turn.conversation_id,
            endpoint="t",
        )
    assert len(backends.chat.calls) == 1  # type: ignore[attr-defined]


async def test_rag_sources_in_prompt_and_result(
    factory: Any, app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    async with transaction(factory) as session:
        collection = RagCollection(user_id=user["id"], name="kb", qdrant_collection_name="kb")
        session.add(collection)
        await session.flush()
        collection_id = collection.id
    doc = uuid.uuid4()
    retriever = FakeRetriever(
        [
            RetrievedChunk("The warranty lasts two years.", 0.91, doc, "warranty.pdf", page=2),
            RetrievedChunk("Returns within 30 days.", 0.85, doc, "warranty.pdf", page=3),
            RetrievedChunk("Unrelated text.", 0.40, doc, "warranty.pdf", page=9),
        ]
    )
    chat = FakeChat()
    bot = await new_bot(
        client,
        user,
        rag_collection_id=str(collection_id),
        top_k=3,
        score_threshold=0.5,
        search_mode="dense",
    )
    result = await service.run_turn(
        factory,
        subject,
        ChatbotBackends(chat=chat, retriever=retriever),
        chatbot_id=bot,
        message="How long is the warranty?",
        endpoint="t",
    )
    ((searched_as, searched_in, query, top_k, mode),) = retriever.calls
    assert (searched_as.kind, searched_as.user_id, searched_in, query, top_k, mode) == (
        "user",
        user["id"],
        collection_id,
        "How long is the warranty?",
        3,
        "dense",
    )
    system = chat.calls[0]["body"]["messages"][0]["content"]
    assert system.startswith("Be exact.\n\n## Retrieved sources")
    assert (
        '<source id="1" document="warranty.pdf" page="2">\nThe warranty lasts two years.\n</source>'
        in system
    )
    assert '<source id="2" document="warranty.pdf" page="3">' in system
    assert "Unrelated text." not in system
    assert [(s["index"], s["page"], s["snippet"]) for s in result.sources] == [
        (1, 2, "The warranty lasts two years."),
        (2, 3, "Returns within 30 days."),
    ]
    assert result.sources[0]["document_id"] == str(doc)
    async with transaction(factory) as session:
        answer = await session.get(ChatbotMessage, result.message_id)
        assert answer is not None and answer.sources == result.sources


async def test_answer_only_from_sources_refuses_without_calling_the_model(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    async with transaction(factory) as session:
        collection = RagCollection(user_id=user["id"], name="kb", qdrant_collection_name="kb")
        session.add(collection)
        await session.flush()
        collection_id = str(collection.id)
    chat = FakeChat()
    weak = FakeRetriever([RetrievedChunk("barely related", 0.2, uuid.uuid4(), "x.txt")])
    backends = ChatbotBackends(chat=chat, retriever=weak)
    default_bot = await new_bot(
        client,
        user,
        rag_collection_id=collection_id,
        score_threshold=0.6,
        answer_only_from_sources=True,
    )
    result = await service.run_turn(
        factory, subject, backends, chatbot_id=default_bot, message="?", endpoint="t"
    )
    assert (result.response, result.refused, result.sources) == (DEFAULT_NO_SOURCES_REPLY, True, [])
    assert chat.calls == []
    assert await stored(factory, result.conversation_id) == [
        ("user", "?"),
        ("assistant", DEFAULT_NO_SOURCES_REPLY),
    ]

    custom_bot = await new_bot(
        client,
        user,
        rag_collection_id=collection_id,
        score_threshold=0.6,
        answer_only_from_sources=True,
        no_sources_reply="Not in our docs.",
    )
    streamed = await service.stream_turn(
        factory, subject, backends, chatbot_id=custom_bot, message="?", endpoint="t"
    )
    events = [e async for e in streamed.events]
    assert events[0] == "Not in our docs."
    assert isinstance(events[1], service.TurnResult) and events[1].refused
    assert chat.calls == []

    # With a relevant source the model is called and told to stay within the sources.
    weak.chunks = [RetrievedChunk("the answer", 0.9, uuid.uuid4(), "x.txt")]
    answered = await service.run_turn(
        factory, subject, backends, chatbot_id=default_bot, message="?", endpoint="t"
    )
    assert not answered.refused and len(chat.calls) == 1
    assert "Answer only from these sources" in chat.calls[0]["body"]["messages"][0]["content"]


async def test_a_failed_call_records_nothing(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    chat = FakeChat()
    backends = ChatbotBackends(chat=chat, retriever=None)
    bot = await new_bot(client, user)
    first = await service.run_turn(
        factory, subject, backends, chatbot_id=bot, message="q1", endpoint="t"
    )
    chat.error = QuotaExceededError("Budget exhausted", code="insufficient_quota")
    with pytest.raises(QuotaExceededError):
        await service.run_turn(
            factory,
            subject,
            backends,
            chatbot_id=bot,
            message="q2",
            conversation_id=first.conversation_id,
            endpoint="t",
        )
    with pytest.raises(QuotaExceededError):
        await service.stream_turn(
            factory, subject, backends, chatbot_id=bot, message="q3", endpoint="t"
        )
    assert await stored(factory, first.conversation_id) == [
        ("user", "q1"),
        ("assistant", "answer 1"),
    ]
    async with transaction(factory) as session:
        assert await session.scalar(select(func.count()).select_from(ChatbotMessage)) == 2


async def test_streamed_turn_yields_deltas_then_records(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    chat = FakeChat()
    backends = ChatbotBackends(chat=chat, retriever=None)
    bot = await new_bot(client, user)
    turn = await service.stream_turn(
        factory, subject, backends, chatbot_id=bot, message="hi", endpoint="t"
    )
    events = [e async for e in turn.events]
    assert events[:3] == ["stre", "amed ", "answer"]
    final = events[3]
    assert isinstance(final, service.TurnResult)
    assert (final.response, final.prompt_tokens, final.completion_tokens) == (
        "streamed answer",
        9,
        3,
    )
    assert final.conversation_id == turn.conversation_id
    assert await stored(factory, turn.conversation_id) == [
        ("user", "hi"),
        ("assistant", "streamed answer"),
    ]


async def test_abandoned_stream_closes_upstream_and_records_nothing(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    chat = FakeChat()
    bot = await new_bot(client, user)
    turn = await service.stream_turn(
        factory,
        subject,
        ChatbotBackends(chat=chat, retriever=None),
        chatbot_id=bot,
        message="hi",
        endpoint="t",
    )
    events = turn.events
    assert await events.__anext__() == "stre"
    await events.aclose()  # type: ignore[attr-defined]
    assert chat.closed
    assert await stored(factory, turn.conversation_id) == []


async def test_model_limits_and_confidential_flag_reach_the_gateway(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    chat = FakeChat(
        ModelInfo(id="m1", confidential=True, context_window=1200, max_output_tokens=300)
    )
    backends = ChatbotBackends(chat=chat, retriever=None)
    bot = await new_bot(
        client,
        user,
        model="private-model",
        confidential_only=True,
        memory_messages=100,
        max_tokens=500,
    )
    long = "x" * 600  # about 200 tokens per message
    turn = await service.run_turn(
        factory, subject, backends, chatbot_id=bot, message=long, endpoint="t"
    )
    for _ in range(5):
        await service.run_turn(
            factory,
            subject,
            backends,
            chatbot_id=bot,
            message=long,
            conversation_id=turn.conversation_id,
            endpoint="t",
        )
    last = chat.calls[-1]
    assert last["confidential_only"] is True
    assert last["body"]["max_tokens"] == 300
    sent = last["body"]["messages"]
    # 10 earlier messages exist, but only what fits 1200 - 300 tokens goes upstream.
    assert 2 <= len(sent) - 2 < 10
    assert sent[1]["role"] == "user" and sent[-1] == {"role": "user", "content": long}
    with pytest.raises(BadRequestError) as too_long:
        await service.run_turn(
            factory, subject, backends, chatbot_id=bot, message="y" * 5000, endpoint="t"
        )
    assert too_long.value.code == "message_too_long"


async def test_disabled_chatbot_is_refused(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    bot = await new_bot(client, user)
    await client.patch(f"{BOTS}/{bot}", json={"is_active": False}, headers=user["headers"])
    with pytest.raises(BadRequestError) as raised:
        await service.run_turn(
            factory,
            subject,
            ChatbotBackends(FakeChat(), None),
            chatbot_id=bot,
            message="x",
            endpoint="t",
        )
    assert raised.value.code == "chatbot_inactive"


async def test_stateless_client_history_seeds_a_new_conversation(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    chat = FakeChat()
    backends = ChatbotBackends(chat=chat, retriever=None)
    bot = await new_bot(client, user)
    earlier, message = service.split_openai_messages(
        [
            {"role": "system", "content": "ignored: the chatbot's prompt governs"},
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "hello Ada"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is "},
                    {"type": "text", "text": "my name?"},
                ],
            },
        ]
    )
    assert earlier == [
        HistoryMessage("user", "my name is Ada"),
        HistoryMessage("assistant", "hello Ada"),
    ]
    turn = await service.run_turn(
        factory,
        subject,
        backends,
        chatbot_id=bot,
        message=message,
        seed_history=earlier,
        endpoint="t",
    )
    assert chat.calls[0]["body"]["messages"] == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "my name is Ada"},
        {"role": "assistant", "content": "hello Ada"},
        {"role": "user", "content": "what is my name?"},
    ]
    assert await stored(factory, turn.conversation_id) == [
        ("user", "my name is Ada"),
        ("assistant", "hello Ada"),
        ("user", "what is my name?"),
        ("assistant", "answer 1"),
    ]
    # Continuing by id: the server's memory governs, client-sent history is ignored.
    await service.run_turn(
        factory,
        subject,
        backends,
        chatbot_id=bot,
        message="again",
        conversation_id=turn.conversation_id,
        seed_history=[HistoryMessage("user", "forged")],
        endpoint="t",
    )
    assert "forged" not in str(chat.calls[1]["body"]["messages"])


@pytest.mark.parametrize(
    "messages",
    [
        [],
        [{"role": "assistant", "content": "hi"}],
        [{"role": "tool", "content": "x"}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": 42}],
        [{"role": "user", "content": "   "}],
        ["not a message"],
    ],
)
def test_unsupported_openai_messages_are_a_400(messages: list[Any]) -> None:
    with pytest.raises(BadRequestError) as raised:
        service.split_openai_messages(messages)
    assert raised.value.status_code == 400


async def test_a_collection_lost_by_the_owner_is_a_clear_error(
    factory: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    subject = await subject_for(factory, user)
    async with transaction(factory) as session:
        collection = RagCollection(user_id=user["id"], name="kb", qdrant_collection_name="kb")
        session.add(collection)
        await session.flush()
        collection_id = str(collection.id)

    class LostRetriever(FakeRetriever):
        async def search(self, *args: Any, **kwargs: Any) -> list[RetrievedChunk]:
            raise NotFoundError("Collection not found", code="collection_not_found")

    chat = FakeChat()
    bot = await new_bot(client, user, rag_collection_id=collection_id)
    with pytest.raises(BadRequestError) as raised:
        await service.run_turn(
            factory,
            subject,
            ChatbotBackends(chat=chat, retriever=LostRetriever([])),
            chatbot_id=bot,
            message="?",
            endpoint="t",
        )
    assert raised.value.code == "rag_collection_unavailable"
    assert chat.calls == []
