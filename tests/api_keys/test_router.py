"""API keys on the internal API, and what a key can do on the public one."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from enclava.api_keys import last_used as last_used_module
from enclava.api_keys import lookup
from enclava.api_keys.last_used import STATE_KEY as LAST_USED_KEY
from enclava.db import transaction
from enclava.kit.time import utcnow
from enclava.models import ApiKey, AuditLog, User
from tests.auth.probe import public_probe
from tests.conftest import Actors, StartApp

KEYS = "/api-internal/v1/api-keys"
PROBE = "/api/v1/_probe/chat"


@pytest.fixture
async def probe(make_app: StartApp) -> tuple[Any, httpx.AsyncClient, Actors]:
    """An app with the probe endpoints under /api/v1, and actors on it."""
    app, client = await make_app(public_probe)
    return app, client, Actors(app, client)


def key_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_create_shows_the_key_once_and_stores_only_its_hmac(
    probe: tuple[Any, httpx.AsyncClient, Actors],
) -> None:
    app, client, actors = probe
    user = await actors.user()
    response = await client.post(KEYS, headers=user["headers"], json={"name": "laptop"})
    assert response.status_code == 201
    created = response.json()
    key = created["key"]
    assert key.startswith("ek_") and len(key) > 40
    assert created["key_prefix"] == key[:12]
    assert created["scopes"] == ["llm.chat", "llm.embeddings", "llm.models"]
    assert created["tier"] == "standard" and created["user_id"] == str(user["id"])

    listed = (await client.get(KEYS, headers=user["headers"])).json()
    assert [k["id"] for k in listed] == [created["id"]]
    assert "key" not in listed[0]
    fetched = (await client.get(f"{KEYS}/{created['id']}", headers=user["headers"])).json()
    assert "key" not in fetched and fetched["name"] == "laptop"

    async with transaction(app.state.enclava.session_factory) as session:
        row = (await session.execute(select(ApiKey))).scalar_one()
        audit = (
            (await session.execute(select(AuditLog).where(AuditLog.action == "api_key.create")))
            .scalars()
            .one()
        )
    assert row.key_hash != key and len(row.key_hash) == 64 and key not in row.key_hash
    assert key not in str(audit.details) and audit.resource_id == created["id"]

    used = await client.get(PROBE, headers=key_headers(key))
    assert used.status_code == 200
    assert used.json()["api_key_id"] == created["id"]


async def test_key_settings_are_stored(probe: tuple[Any, httpx.AsyncClient, Actors]) -> None:
    _, client, actors = probe
    user = await actors.user()
    expires = (utcnow() + timedelta(days=3)).isoformat()
    response = await client.post(
        KEYS,
        headers=user["headers"],
        json={
            "name": "rag bot",
            "scopes": ["rag.read", "llm.chat"],
            "allowed_models": ["m2", "m1", "m1"],
            "confidential_only": True,
            "expires_at": expires,
        },
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["scopes"] == ["llm.chat", "rag.read"]
    assert body["allowed_models"] == ["m1", "m2"]
    assert body["confidential_only"] is True
    assert body["expires_at"] is not None


BAD_KEY_REQUESTS: list[tuple[dict[str, Any], int]] = [
    ({"name": ""}, 422),
    ({"name": "x", "scopes": ["admin"]}, 422),
    ({"name": "x", "tier": "gold"}, 422),
    ({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}, 400),
    ({"name": "x", "expires_at": "2999-01-01T00:00:00"}, 422),  # no time zone
    ({"name": "x", "rate_limit_per_minute": 0}, 422),
    ({"name": "   "}, 400),
]


async def test_bad_key_requests(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    for body, status in BAD_KEY_REQUESTS:
        response = await client.post(KEYS, headers=user["headers"], json=body)
        assert response.status_code == status, (body, response.text)
        assert "code" in response.json()
    assert (await client.get(KEYS, headers=user["headers"])).json() == []


async def test_premium_tier_and_overrides_are_for_admins(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    admin = await actors.user(role="admin")
    for extra in ({"tier": "premium"}, {"rate_limit_per_minute": 10}):
        denied = await client.post(KEYS, headers=user["headers"], json={"name": "x", **extra})
        assert denied.status_code == 403 and denied.json()["code"] == "admin_required"
    granted = await client.post(
        KEYS,
        headers=admin["headers"],
        json={"name": "x", "tier": "premium", "user_id": str(user["id"]), "rate_limit_per_hour": 7},
    )
    assert granted.status_code == 201
    assert granted.json()["user_id"] == str(user["id"])
    assert granted.json()["tier"] == "premium" and granted.json()["rate_limit_per_hour"] == 7
    mine = (await client.get(KEYS, headers=user["headers"])).json()
    assert [k["id"] for k in mine] == [granted.json()["id"]]


async def test_users_cannot_touch_each_others_keys(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    alice = await actors.user()
    bob = await actors.user()
    admin = await actors.user(role="admin")
    bobs = await actors.api_key(bob)

    # Every way of reaching Bob's key from Alice's session is a 404, as for a key that
    # does not exist: ids are not confirmed.
    for method, path in (
        ("GET", f"{KEYS}/{bobs['id']}"),
        ("DELETE", f"{KEYS}/{bobs['id']}"),
        ("POST", f"{KEYS}/{bobs['id']}/rotate"),
    ):
        response = await client.request(method, path, headers=alice["headers"])
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "API key not found", "code": "not_found"}
    assert (await client.get(KEYS, headers=alice["headers"])).json() == []
    listed = await client.get(KEYS, headers=alice["headers"], params={"user_id": str(bob["id"])})
    assert listed.json() == []
    other = await client.post(
        KEYS, headers=alice["headers"], json={"name": "x", "user_id": str(bob["id"])}
    )
    assert other.status_code == 404

    # Bob's key still works; the admin sees and manages it.
    everyone = (await client.get(KEYS, headers=admin["headers"])).json()
    assert str(bobs["id"]) in [k["id"] for k in everyone]
    assert (
        await client.delete(f"{KEYS}/{bobs['id']}", headers=admin["headers"])
    ).status_code == 204


async def test_revocation_takes_effect_at_once_with_a_warm_cache(
    probe: tuple[Any, httpx.AsyncClient, Actors],
) -> None:
    _, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user)
    for _ in range(3):  # warm the lookup cache
        assert (await client.get(PROBE, headers=key["headers"])).status_code == 200

    revoked = await client.delete(f"{KEYS}/{key['id']}", headers=user["headers"])
    assert revoked.status_code == 204
    response = await client.get(PROBE, headers=key["headers"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_revoked"
    assert response.json()["error"]["type"] == "authentication_error"

    # Revoked keys are hidden by default and can be listed on request.
    assert (await client.get(KEYS, headers=user["headers"])).json() == []
    listed = await client.get(KEYS, headers=user["headers"], params={"include_revoked": "true"})
    assert listed.json()[0]["revoked_at"] is not None
    # Revoking twice is fine; rotating a revoked key is not.
    again = await client.delete(f"{KEYS}/{key['id']}", headers=user["headers"])
    assert again.status_code == 204
    rotate = await client.post(f"{KEYS}/{key['id']}/rotate", headers=user["headers"])
    assert rotate.status_code == 409


async def test_revocation_reaches_another_instance(make_app: StartApp) -> None:
    """Instance B cached the key; instance A revokes it; B refuses it on the next request.

    With PostgreSQL + Redis both instances share the cache and A's invalidation reaches B. The
    embedded stores belong to one process (instances share no cache), so there B runs with its
    key cache off and the test shows that the database, not a cache, decides.
    """
    from tests.conftest import BACKEND

    app_a, client_a = await make_app(public_probe)
    if BACKEND == "postgres":
        _, client_b = await make_app(public_probe)
    else:
        _, client_b = await make_app(public_probe, api_key_cache_ttl_s=0)
    actors = Actors(app_a, client_a)
    user = await actors.user()
    key = await actors.api_key(user)
    assert (await client_b.get(PROBE, headers=key["headers"])).status_code == 200
    assert (
        await client_a.delete(f"{KEYS}/{key['id']}", headers=user["headers"])
    ).status_code == 204
    assert (await client_b.get(PROBE, headers=key["headers"])).status_code == 401


async def test_rotation_replaces_the_secret_at_once(
    probe: tuple[Any, httpx.AsyncClient, Actors],
) -> None:
    _, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user, scopes=["llm.chat", "rag.read"])
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200

    rotated = await client.post(f"{KEYS}/{key['id']}/rotate", headers=user["headers"])
    assert rotated.status_code == 200
    body = rotated.json()
    assert body["id"] == str(key["id"]) and body["key"] != key["key"]
    assert body["scopes"] == ["llm.chat", "rag.read"]

    old = await client.get(PROBE, headers=key["headers"])
    assert old.status_code == 401 and old.json()["error"]["code"] == "invalid_api_key"
    new = await client.get(PROBE, headers=key_headers(body["key"]))
    assert new.status_code == 200 and new.json()["api_key_id"] == str(key["id"])


async def test_expired_key_is_refused_also_from_the_cache(
    monkeypatch: pytest.MonkeyPatch, probe: tuple[Any, httpx.AsyncClient, Actors]
) -> None:
    _, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user, expires_at=utcnow() + timedelta(hours=1))
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200  # now cached
    monkeypatch.setattr(lookup, "utcnow", lambda: utcnow() + timedelta(hours=2))
    response = await client.get(PROBE, headers=key["headers"])
    assert response.status_code == 401 and response.json()["error"]["code"] == "api_key_expired"


async def test_disabled_owner_cuts_off_their_keys(
    probe: tuple[Any, httpx.AsyncClient, Actors],
) -> None:
    _, client, actors = probe
    admin = await actors.user(role="admin")
    user = await actors.user()
    key = await actors.api_key(user)
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200
    await client.patch(
        f"/api-internal/v1/users/{user['id']}", headers=admin["headers"], json={"is_active": False}
    )
    response = await client.get(PROBE, headers=key["headers"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_owner_inactive"


async def test_last_used_is_recorded_and_debounced(
    monkeypatch: pytest.MonkeyPatch, probe: tuple[Any, httpx.AsyncClient, Actors]
) -> None:
    app, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user)

    async def last_used() -> Any:
        async with transaction(app.state.enclava.session_factory) as session:
            row = await session.get(ApiKey, key["id"])
            assert row is not None
            return row.last_used_at

    recorder = app.state.enclava.extras[LAST_USED_KEY]
    assert await last_used() is None
    await client.get(PROBE, headers=key["headers"])
    await recorder.flush()  # written in the background, off the request
    first = await last_used()
    assert first is not None
    await client.get(PROBE, headers=key["headers"])
    await recorder.flush()
    assert await last_used() == first  # within the debounce interval: no second write

    # Once the interval has passed, the next use is recorded again.
    later = time.monotonic() + app.state.enclava.settings.api_key_last_used_debounce_s + 1
    monkeypatch.setattr(last_used_module, "monotonic", lambda: later)
    await client.get(PROBE, headers=key["headers"])
    await recorder.flush()
    second = await last_used()
    assert second is not None and second > first


BAD_KEYS = [
    ("sk-" + "a" * 48, "start with 'ek_'"),
    ("ek_short", "start with 'ek_'"),
    ("ek_" + "!" * 43, "start with 'ek_'"),
    ("ek_" + "a" * 43, "Invalid API key"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln", "sign-in token"),
    ("ek_" + "a" * 5000, "too long"),
]


async def test_bad_keys_get_a_clear_401(probe: tuple[Any, httpx.AsyncClient, Actors]) -> None:
    _, client, _ = probe
    for token, message in BAD_KEYS:
        response = await client.get(PROBE, headers=key_headers(token))
        assert response.status_code == 401, token[:20]
        error = response.json()["error"]
        assert message in error["message"] and error["type"] == "authentication_error"


async def test_keys_in_the_query_string_are_refused(
    probe: tuple[Any, httpx.AsyncClient, Actors],
) -> None:
    _, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user)
    for params in ({"api_key": key["key"]}, {"q": key["key"]}, {"access_token": "x"}):
        # Refused even with a valid header: the key in the URL must be treated as leaked.
        response = await client.get(PROBE, params=params, headers=key["headers"])
        assert response.status_code == 400
        error = response.json()["error"]
        assert error["code"] == "credentials_in_query" and "Authorization" in error["message"]
    internal = await client.get(
        "/api-internal/v1/auth/me",
        params={"access_token": user["tokens"]["access_token"]},
    )
    assert internal.status_code == 400 and internal.json()["code"] == "credentials_in_query"


async def test_a_key_never_exceeds_its_owners_scopes(
    monkeypatch: pytest.MonkeyPatch, probe: tuple[Any, httpx.AsyncClient, Actors]
) -> None:
    """Narrowing what a user holds narrows their keys: at creation and on every request."""
    from enclava.api_keys import service as key_service
    from enclava.auth import subject as subject_module

    _, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user, scopes=["llm.chat", "rag.read"])
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200

    def narrowed(u: Any) -> frozenset[str]:
        return frozenset({"rag.read"})

    monkeypatch.setattr(subject_module, "user_scopes", narrowed)
    monkeypatch.setattr(key_service, "user_scopes", narrowed)
    denied = await client.get(PROBE, headers=key["headers"])
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "insufficient_scope"
    create = await client.post(
        KEYS, headers=user["headers"], json={"name": "x", "scopes": ["llm.chat"]}
    )
    assert create.status_code == 403 and create.json()["code"] == "scope_not_held"


async def test_key_checks_do_not_wait_for_a_writer(
    probe: tuple[Any, httpx.AsyncClient, Actors],
) -> None:
    """Authenticating only reads: a long write transaction elsewhere does not hold it up (on
    SQLite, where there is one writer, the reads take no turn on the write lock)."""
    app, client, actors = probe
    user = await actors.user()
    key = await actors.api_key(user)
    # The first use records last-used (a write); later ones within the debounce only read.
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200
    state = app.state.enclava
    async with transaction(state.session_factory) as writer:
        await writer.execute(select(ApiKey.id).limit(1))  # the write transaction has begun
        response = await asyncio.wait_for(client.get(PROBE, headers=key["headers"]), 10)
        assert response.status_code == 200
    # And a disabled owner is seen at once (a change made outside the users service, as here,
    # invalidates the cached snapshots of the owner's keys itself).
    async with transaction(state.session_factory) as session:
        owner = await session.get(User, uuid.UUID(str(user["id"])))
        assert owner is not None
        owner.is_active = False
    await lookup.invalidate_owner(state, owner.id)
    response = await client.get(PROBE, headers=key["headers"])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "api_key_owner_inactive"
