"""Key lookup: a cached key costs no database read, and every change is seen on the next request.

On PostgreSQL + Redis the instances of a deployment share the cache, so the cross-instance
tests run two instances with their caches on. The embedded stores belong to one process
(instances share no cache), so there the second instance runs with its key cache off and the
tests show that the database, not a cache, decides.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from enclava.api_keys import lookup
from enclava.api_keys import repository as key_repository
from enclava.api_keys.last_used import STATE_KEY as LAST_USED_KEY
from enclava.db import transaction
from enclava.kit.cache import RedisCache
from enclava.kit.time import utcnow
from enclava.models import ApiKey, User
from tests.auth.probe import public_probe
from tests.conftest import BACKEND, Actors, StartApp

PROBE = "/api/v1/_probe/chat"
USERS = "/api-internal/v1/users"


@contextmanager
def counted_statements(app: Any) -> Iterator[list[str]]:
    """Every SQL statement the app's engine runs inside the block."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = app.state.enclava.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def two_instances(
    make_app: StartApp,
) -> tuple[Any, httpx.AsyncClient, Any, httpx.AsyncClient]:
    app_a, client_a = await make_app(public_probe)
    if BACKEND == "postgres":
        app_b, client_b = await make_app(public_probe)
    else:
        app_b, client_b = await make_app(public_probe, api_key_cache_ttl_s=0)
    return app_a, client_a, app_b, client_b


async def test_a_cached_key_costs_no_database_read(make_app: StartApp) -> None:
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    with counted_statements(app) as warm_up:
        assert (await client.get(PROBE, headers=key["headers"])).status_code == 200
        await app.state.enclava.extras[LAST_USED_KEY].flush()
    assert warm_up  # the miss read the key and its owner, and last-used was recorded

    with counted_statements(app) as statements:
        for _ in range(20):
            response = await client.get(PROBE, headers=key["headers"])
            assert response.status_code == 200
            assert response.json()["api_key_id"] == str(key["id"])
        await app.state.enclava.extras[LAST_USED_KEY].flush()
    assert statements == []


async def test_owner_changes_take_effect_on_the_next_request(make_app: StartApp) -> None:
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    admin = await actors.user(role="admin")
    user = await actors.user()
    key = await actors.api_key(user)
    state = app.state.enclava
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200  # cached

    promoted = await client.patch(
        f"{USERS}/{user['id']}", headers=admin["headers"], json={"role": "admin"}
    )
    assert promoted.status_code == 200
    assert (await lookup.authenticate(state, key["key"])).user.is_admin

    await client.patch(f"{USERS}/{user['id']}", headers=admin["headers"], json={"is_active": False})
    refused = await client.get(PROBE, headers=key["headers"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_owner_inactive"

    await client.patch(f"{USERS}/{user['id']}", headers=admin["headers"], json={"is_active": True})
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200

    assert (
        await client.delete(f"{USERS}/{user['id']}", headers=admin["headers"])
    ).status_code == 204
    gone = await client.get(PROBE, headers=key["headers"])
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"


async def test_owner_changes_reach_another_instance(make_app: StartApp) -> None:
    """Instance B cached the key with its owner; admin changes on instance A reach B at once."""
    app_a, client_a, app_b, client_b = await two_instances(make_app)
    actors = Actors(app_a, client_a)
    admin = await actors.user(role="admin")
    user = await actors.user()
    key = await actors.api_key(user)
    assert (await client_b.get(PROBE, headers=key["headers"])).status_code == 200

    await client_a.patch(
        f"{USERS}/{user['id']}", headers=admin["headers"], json={"is_active": False}
    )
    refused = await client_b.get(PROBE, headers=key["headers"])
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "api_key_owner_inactive"

    await client_a.patch(
        f"{USERS}/{user['id']}", headers=admin["headers"], json={"is_active": True, "role": "admin"}
    )
    assert (await client_b.get(PROBE, headers=key["headers"])).status_code == 200
    assert (await lookup.authenticate(app_b.state.enclava, key["key"])).user.is_admin

    deleted = await client_a.delete(f"{USERS}/{user['id']}", headers=admin["headers"])
    assert deleted.status_code == 204
    gone = await client_b.get(PROBE, headers=key["headers"])
    assert gone.status_code == 401 and gone.json()["error"]["code"] == "invalid_api_key"


async def test_a_lookup_that_read_before_a_change_cannot_cache_it(
    monkeypatch: pytest.MonkeyPatch, make_app: StartApp
) -> None:
    """The stale-load race: a lookup reads the key and its owner, then (before it writes the
    cache) another request changes them and invalidates. The next lookup sees the change."""
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    state = app.state.enclava
    user = await actors.user()
    key = await actors.api_key(user)
    real_read = key_repository.read_key_and_owner
    change: dict[str, Any] = {}

    async def read_then_change(conn: Any, key_hash: str) -> Any:
        found = await real_read(conn, key_hash)
        if "apply" in change:
            await change.pop("apply")()
        return found

    monkeypatch.setattr(key_repository, "read_key_and_owner", read_then_change)

    async def disable_owner() -> None:
        async with transaction(state.session_factory) as session:
            owner = await session.get(User, user["id"])
            assert owner is not None
            owner.is_active = False
        await lookup.invalidate_owner(state, user["id"])

    # The entry was absent when the lookup began.
    change["apply"] = disable_owner
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200  # read before
    after = await client.get(PROBE, headers=key["headers"])
    assert after.status_code == 401 and after.json()["error"]["code"] == "api_key_owner_inactive"

    async def enable_owner() -> None:
        async with transaction(state.session_factory) as session:
            owner = await session.get(User, user["id"])
            assert owner is not None
            owner.is_active = True
            await session.flush()
        await lookup.invalidate_owner(state, user["id"])

    async def revoke() -> None:
        async with transaction(state.session_factory) as session:
            row = await session.get(ApiKey, key["id"])
            assert row is not None
            row.revoked_at = utcnow()
            key_hash = row.key_hash
        await lookup.invalidate(state.cache, key_hash)

    # The entry was a tombstone when the lookup began (left by re-enabling the owner).
    await enable_owner()
    change["apply"] = revoke
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200  # read before
    after = await client.get(PROBE, headers=key["headers"])
    assert after.status_code == 401 and after.json()["error"]["code"] == "api_key_revoked"


async def test_a_cache_outage_refuses_keys(make_app: StartApp) -> None:
    """Whether the key is cached or not, an unreachable cache means 503, never a guess."""
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    user = await actors.user()
    key = await actors.api_key(user)
    uncached = await actors.api_key(user)
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200  # cached
    state = app.state.enclava
    reachable = state.cache
    # A port where nothing listens.
    state.cache = RedisCache.from_url("redis://127.0.0.1:9/0")
    try:
        for headers in (key["headers"], uncached["headers"]):
            response = await client.get(PROBE, headers=headers)
            assert response.status_code == 503
            assert response.json()["error"]["code"] == "credential_store_unavailable"
    finally:
        await state.cache.close()
        state.cache = reachable


async def test_an_unreadable_entry_is_a_miss(make_app: StartApp) -> None:
    """Entries of another snapshot version (or garbage) are read from the database again."""
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    state = app.state.enclava
    key_hash = lookup.hash_key(state.settings.secret_key_value, key["key"])
    for stale in ({"v": 1, "key": {"id": "x"}}, {"v": 2, "key": {}, "owner": {}}, "garbage"):
        await state.cache.set(f"apikey:{key_hash}", stale, 30)
        response = await client.get(PROBE, headers=key["headers"])
        assert response.status_code == 200 and response.json()["api_key_id"] == str(key["id"])
        assert lookup.restore(await state.cache.get(f"apikey:{key_hash}")) is not None


def test_the_near_cache_is_bounded_in_number_and_age(monkeypatch: Any) -> None:
    """An instance's copies of key cache entries: at most ``max_entries`` (the oldest goes
    first), none older than the age asked for, and a copy re-read unchanged keeps its age."""
    from enclava.api_keys import lookup

    clock = [1000.0]
    monkeypatch.setattr(lookup.time, "monotonic", lambda: clock[0])
    near = lookup.NearCache(max_entries=2)
    near.put("a", b"A1")
    clock[0] += 10
    near.put("b", b"B1")
    near.put("a", b"A1")  # unchanged: still 10 s old
    assert near.get("a", max_age_s=5) is None and near.get("a", max_age_s=30) == b"A1"
    near.put("c", b"C1")  # a third key: the oldest copy ("a") goes
    assert near.get("a", 30) is None
    assert (near.get("b", 30), near.get("c", 30)) == (b"B1", b"C1")
    near.put("b", b"B2")  # changed bytes: a new copy, age 0
    clock[0] += 4
    assert near.get("b", max_age_s=5) == b"B2"
    near.drop("b")
    assert near.get("b", 30) is None


async def test_a_cached_snapshot_restores_every_column_as_read(make_app: StartApp) -> None:
    """The key and owner a request sees from the cache equal the rows in the database, column
    for column (types included), carry no password hash, and belong to no session."""
    from sqlalchemy import inspect

    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    state = app.state.enclava
    async with transaction(state.session_factory) as session:
        stored_key = await session.get(ApiKey, key["id"])
        assert stored_key is not None
        stored_owner = await session.get(User, stored_key.user_id)
        assert stored_owner is not None
        restored = lookup.restore(lookup.snapshot(stored_key, stored_owner))
    assert restored is not None
    api_key, owner = restored
    for row, source in ((api_key, stored_key), (owner, stored_owner)):
        for attr in inspect(type(row)).column_attrs:
            if attr.key == "password_hash":
                continue
            value, expected = getattr(row, attr.key), getattr(source, attr.key)
            # (asyncpg reads UUIDs as its own subclass of uuid.UUID)
            assert value == expected and isinstance(expected, type(value)), attr.key
        assert inspect(row).session is None and inspect(row).transient
    assert owner.password_hash == "" and stored_owner.password_hash
