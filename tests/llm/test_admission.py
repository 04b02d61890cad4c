"""Admission: every gateway request is counted against its key's rate limits exactly once and a
refused request holds no money, whether the count runs in the authentication dependency
(embedded) or in the gateway's one Redis round trip with the reservation (PostgreSQL + Redis)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from redis.asyncio.client import Pipeline, Redis

from enclava.llm import admission
from enclava.testing.mock_upstream import Simulator
from tests.conftest import BACKEND, Actors
from tests.llm.conftest import CHAT, key_for
from tests.llm.helpers import add_budget, budget, usage_cost_sum, usage_rows

URL = "/api/v1/chat/completions"
EMBEDDINGS = "/api/v1/embeddings"


def _remaining(response: httpx.Response) -> int:
    return int(response.headers["x-ratelimit-remaining"])


async def test_a_rate_limited_call_holds_no_budget(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, rate_limit_per_minute=2)
    budget_id = await add_budget(app, key, 10**9, key=True)
    answers = [await client.post(URL, json=CHAT, headers=key["headers"]) for _ in range(2)]
    assert [r.status_code for r in answers] == [200, 200]
    assert [_remaining(r) for r in answers] == [1, 0]

    refused = await client.post(URL, json=CHAT, headers=key["headers"])
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60

    assert mock_upstream.total_requests == 2
    state = await budget(app, budget_id)
    assert state.reserved_nanousd == 0  # nothing held for the refused call
    assert state.spent_nanousd == await usage_cost_sum(app) > 0
    assert len(await usage_rows(app)) == 2


async def test_requests_refused_before_the_gateway_are_counted_once(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, rate_limit_per_minute=4)
    headers = {**key["headers"], "content-type": "application/json"}
    malformed = await client.post(URL, content=b"{not json", headers=headers)
    assert malformed.status_code == 400 and _remaining(malformed) == 3
    unknown = await client.post(URL, json={**CHAT, "model": "nope"}, headers=key["headers"])
    assert unknown.status_code == 404 and _remaining(unknown) == 2
    embeddings = await client.post(EMBEDDINGS, content=b"[]", headers=headers)
    assert embeddings.status_code == 400 and _remaining(embeddings) == 1
    answered = await client.post(URL, json=CHAT, headers=key["headers"])
    assert answered.status_code == 200 and _remaining(answered) == 0
    refused = await client.post(URL, json=CHAT, headers=key["headers"])
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert mock_upstream.total_requests == 1


async def test_a_missing_scope_is_counted_and_then_rate_limited(
    client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, scopes=["llm.embeddings"], rate_limit_per_minute=1)
    first = await client.post(URL, json=CHAT, headers=key["headers"])
    assert first.status_code == 403 and first.json()["error"]["code"] == "insufficient_scope"
    assert _remaining(first) == 0
    second = await client.post(URL, json=CHAT, headers=key["headers"])
    assert second.status_code == 429
    assert mock_upstream.total_requests == 0


async def test_a_budget_refusal_is_counted_against_the_rate_limit(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, rate_limit_per_minute=2)
    budget_id = await add_budget(app, key, 1000, key=True)  # less than any call's worst case
    statuses = []
    for _ in range(3):
        response = await client.post(URL, json=CHAT, headers=key["headers"])
        statuses.append((response.status_code, response.json()["error"]["code"]))
    assert statuses == [
        (429, "insufficient_quota"),
        (429, "insufficient_quota"),
        (429, "rate_limit_exceeded"),
    ]
    assert mock_upstream.total_requests == 0
    state = await budget(app, budget_id)
    assert (state.spent_nanousd, state.reserved_nanousd) == (0, 0)


@contextmanager
def redis_round_trips(redis: Redis) -> Iterator[list[tuple[str, ...]]]:
    """Every round trip the app's Redis client makes meanwhile: a command's name (and, for a
    script, its digest), or the names of a pipeline's commands."""
    trips: list[tuple[str, ...]] = []
    original_command = Redis.execute_command
    original_execute = Pipeline.execute

    async def command(self: Any, *args: Any, **options: Any) -> Any:
        if self is redis:
            name = str(args[0]).upper()
            trips.append((name, str(args[1])) if name == "EVALSHA" else (name,))
        return await original_command(self, *args, **options)

    async def execute(self: Any, raise_on_error: bool = True) -> Any:
        trips.append(tuple(str(c[0][0]).upper() for c in self.command_stack))
        return await original_execute(self, raise_on_error)

    Redis.execute_command = command  # type: ignore[method-assign]
    Pipeline.execute = execute  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        Redis.execute_command = original_command  # type: ignore[method-assign]
        Pipeline.execute = original_execute  # type: ignore[method-assign]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_warm_call_takes_one_round_trip_on_redis(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator, stream: bool
) -> None:
    """On Redis a warm chat call makes one round trip before the provider: one script confirms
    the key's cached entry, counts the request and reserves. Embedded there is no Redis and
    the dependency counts the request in process memory."""
    from enclava.budgets.ledger import get_ledger

    state = app.state.enclava
    key = await key_for(actors)
    await add_budget(app, key, 10**9, key=True)
    body = {**CHAT, "stream": stream}
    assert (await client.post(URL, json=body, headers=key["headers"])).status_code == 200
    await usage_rows(app)  # the first call loaded the budget; its settlement is written
    if BACKEND != "postgres":
        assert not admission.defers_rate_limit(state)
        answered = await client.post(URL, json=body, headers=key["headers"])
        assert answered.status_code == 200 and _remaining(answered) >= 0
        return

    assert admission.defers_rate_limit(state)
    with redis_round_trips(state.cache.client) as trips:
        answered = await client.post(URL, json=body, headers=key["headers"])
    assert answered.status_code == 200
    assert _remaining(answered) >= 0  # the count's window reached the headers
    assert trips[0] == ("EVALSHA", state.extras["admission_script"].sha)
    # Nothing else before the answer (a settlement behind it may follow).
    settle = ("EVALSHA", get_ledger(state)._settle.sha)
    assert all(trip == settle for trip in trips[1:]), trips
    assert len(await usage_rows(app)) == 2


async def _change_key(app: Any, key: dict[str, Any], **values: Any) -> None:
    """Change the key's row straight in the database, then invalidate its cache entry, as the
    lookup module asks of such changes."""
    from enclava.api_keys import lookup
    from enclava.db import transaction
    from enclava.models import ApiKey

    state = app.state.enclava
    async with transaction(state.session_factory) as session:
        row = await session.get(ApiKey, key["id"])
        assert row is not None
        for name, value in values.items():
            setattr(row, name, value)
    await lookup.invalidate(
        state.cache, lookup.hash_key(state.settings.secret_key_value, key["key"])
    )


async def test_a_revoked_key_is_refused_by_an_instance_that_holds_it_warm(
    make_app: Any, mock_upstream: Simulator
) -> None:
    """Instance B served the key (and on Redis keeps a copy of its cache entry); instance A
    revokes it; B's next call is refused with 401, holds nothing and reaches no provider.
    Embedded instances share no cache, so there B runs with its key cache off."""
    app_a, client_a = await make_app()
    if BACKEND == "postgres":
        app_b, client_b = await make_app()
    else:
        app_b, client_b = await make_app(api_key_cache_ttl_s=0)
    actors = Actors(app_a, client_a)
    key = await key_for(actors)
    budget_id = await add_budget(app_a, key, 10**9, key=True)
    for _ in range(2):
        assert (await client_b.post(URL, json=CHAT, headers=key["headers"])).status_code == 200
    revoked = await client_a.delete(
        f"/api-internal/v1/api-keys/{key['id']}", headers=key["owner"]["headers"]
    )
    assert revoked.status_code == 204

    # First a request that fails before admission: the refusal still comes from the key as it
    # is now, not from B's copy of it.
    for request in (
        client_b.post(
            URL,
            content=b"{not json",
            headers={**key["headers"], "content-type": "application/json"},
        ),
        client_b.post(URL, json=CHAT, headers=key["headers"]),
        client_b.post(
            EMBEDDINGS, json={"model": "embed-model", "input": "x"}, headers=key["headers"]
        ),
    ):
        refused = await request
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "api_key_revoked"
    assert mock_upstream.total_requests == 2
    assert (await budget(app_b, budget_id)).reserved_nanousd == 0


async def test_a_narrowed_key_is_refused_at_once_and_counted_once(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, rate_limit_per_minute=10)
    warm = await client.post(URL, json=CHAT, headers=key["headers"])
    assert warm.status_code == 200 and _remaining(warm) == 9
    await _change_key(app, key, allowed_models=["confidential-model"])

    refused = await client.post(URL, json=CHAT, headers=key["headers"])
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "model_not_allowed"
    assert _remaining(refused) == 8
    allowed = await client.post(
        URL, json={**CHAT, "model": "confidential-model"}, headers=key["headers"]
    )
    assert allowed.status_code == 200 and _remaining(allowed) == 7
    assert mock_upstream.total_requests == 2


async def test_a_widened_key_is_served_at_once_and_counted_once(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    """A refusal is decided on the key as it is now: a key whose copy on this instance would
    refuse the model is read afresh, and the call goes through."""
    key = await key_for(actors, rate_limit_per_minute=10, allowed_models=["confidential-model"])
    warm = await client.post(
        URL, json={**CHAT, "model": "confidential-model"}, headers=key["headers"]
    )
    assert warm.status_code == 200 and _remaining(warm) == 9
    await _change_key(app, key, allowed_models=None)

    answered = await client.post(URL, json=CHAT, headers=key["headers"])
    assert answered.status_code == 200, answered.text
    assert answered.json()["model"] == "chat-model"
    assert _remaining(answered) == 8
    assert mock_upstream.total_requests == 2


async def test_a_store_outage_at_admission_refuses_the_call(
    app: Any,
    client: httpx.AsyncClient,
    actors: Actors,
    mock_upstream: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If Redis fails just as a warm call is admitted (its key came from this instance's copy,
    with no round trip), the call is refused with 503 before any provider is called, and
    nothing is recorded: fail closed. Embedded, the store is this process's memory."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    key = await key_for(actors)
    assert (await client.post(URL, json=CHAT, headers=key["headers"])).status_code == 200
    state = app.state.enclava
    if BACKEND != "postgres":
        assert not admission.defers_rate_limit(state)
        return

    async def unreachable(**_: Any) -> Any:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setitem(state.extras, "admission_script", unreachable)
    refused = await client.post(URL, json=CHAT, headers=key["headers"])
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "rate_limit_store_unavailable"
    assert mock_upstream.total_requests == 1
    assert len(await usage_rows(app)) == 1
