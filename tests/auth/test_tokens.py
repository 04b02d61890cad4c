"""Access and refresh tokens: rotation, reuse detection, sign-out, and bad tokens."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import httpx
import jwt
from sqlalchemy import select

from enclava.auth import service
from enclava.auth.tokens import AUDIENCE, ISSUER, create_access_token
from enclava.db import transaction
from enclava.kit.time import utcnow
from enclava.models import AuditLog, User
from tests.conftest import PASSWORD, TEST_SECRET, Actors

ME = "/api-internal/v1/auth/me"
REFRESH = "/api-internal/v1/auth/refresh"
LOGOUT = "/api-internal/v1/auth/logout"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_refresh_rotates_and_the_new_pair_works(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    first = user["tokens"]
    response = await client.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert response.status_code == 200
    second = response.json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert (await client.get(ME, headers=bearer(second["access_token"]))).status_code == 200
    # The older access token stays valid until it expires: same session, not reused.
    assert (await client.get(ME, headers=bearer(first["access_token"]))).status_code == 200
    third = await client.post(REFRESH, json={"refresh_token": second["refresh_token"]})
    assert third.status_code == 200


async def test_reusing_a_refresh_token_ends_the_whole_session(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    stolen = user["tokens"]["refresh_token"]
    rotated = (await client.post(REFRESH, json={"refresh_token": stolen})).json()

    # The old token shows up again (an attacker, or the victim after the attacker): reuse.
    reuse = await client.post(REFRESH, json={"refresh_token": stolen})
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "refresh_token_reused"

    # Everything in the family is dead at once: the newest refresh token and the access tokens.
    newest = await client.post(REFRESH, json={"refresh_token": rotated["refresh_token"]})
    assert newest.status_code == 401 and newest.json()["code"] == "session_revoked"
    for access in (rotated["access_token"], user["tokens"]["access_token"]):
        me = await client.get(ME, headers=bearer(access))
        assert me.status_code == 401 and me.json()["code"] == "session_revoked"

    async with transaction(app.state.enclava.session_factory) as session:
        rows = (
            (
                await session.execute(
                    select(AuditLog).where(AuditLog.action == "auth.refresh_token_reuse")
                )
            )
            .scalars()
            .all()
        )
    assert len(rows) == 1 and rows[0].user_id == user["id"] and rows[0].success is False

    # Other sessions of the same user are untouched.
    other = await client.post(
        "/api-internal/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
    )
    assert (await client.get(ME, headers=bearer(other.json()["access_token"]))).status_code == 200


async def test_concurrent_use_of_one_refresh_token_admits_one(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    import asyncio

    user = await actors.user()
    token = user["tokens"]["refresh_token"]
    responses = await asyncio.gather(
        *(client.post(REFRESH, json={"refresh_token": token}) for _ in range(4))
    )
    assert sum(r.status_code == 200 for r in responses) <= 1
    # Whoever lost revealed a reuse, so the session is over for everyone.
    for r in responses:
        if r.status_code == 200:
            follow = await client.post(REFRESH, json={"refresh_token": r.json()["refresh_token"]})
            assert follow.status_code == 401


async def test_logout_ends_the_session_at_once(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    other = (
        await client.post(
            "/api-internal/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
        )
    ).json()
    response = await client.post(LOGOUT, headers=user["headers"])
    assert response.status_code == 204
    assert (await client.get(ME, headers=user["headers"])).status_code == 401
    refresh = await client.post(REFRESH, json={"refresh_token": user["tokens"]["refresh_token"]})
    assert refresh.status_code == 401
    # The other sign-in goes on.
    assert (await client.get(ME, headers=bearer(other["access_token"]))).status_code == 200


async def test_logout_everywhere(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    other = (
        await client.post(
            "/api-internal/v1/auth/login", json={"email": user["email"], "password": PASSWORD}
        )
    ).json()
    response = await client.post(LOGOUT, headers=user["headers"], json={"all_sessions": True})
    assert response.status_code == 204
    for access in (user["tokens"]["access_token"], other["access_token"]):
        assert (await client.get(ME, headers=bearer(access))).status_code == 401


async def test_cannot_log_out_someone_elses_session(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    alice = await actors.user()
    bob = await actors.user()
    response = await client.post(
        LOGOUT, headers=alice["headers"], json={"refresh_token": bob["tokens"]["refresh_token"]}
    )
    assert response.status_code == 204  # Alice's own session ends; Bob's token is ignored.
    refreshed = await client.post(REFRESH, json={"refresh_token": bob["tokens"]["refresh_token"]})
    assert refreshed.status_code == 200


async def test_disabled_user_is_cut_off_mid_session(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    user = await actors.user()
    key = await actors.api_key(user)
    assert (await client.get(ME, headers=user["headers"])).status_code == 200

    response = await client.patch(
        f"/api-internal/v1/users/{user['id']}", headers=admin["headers"], json={"is_active": False}
    )
    assert response.status_code == 200 and response.json()["is_active"] is False

    me = await client.get(ME, headers=user["headers"])
    assert me.status_code == 401 and me.json()["code"] == "user_inactive"
    refresh = await client.post(REFRESH, json={"refresh_token": user["tokens"]["refresh_token"]})
    assert refresh.status_code == 401
    keys = await client.get("/api-internal/v1/api-keys", headers=user["headers"])
    assert keys.status_code == 401
    assert key["key"]  # the key is refused too: see tests/api_keys for the public API side


async def test_deleted_user_token_is_refused(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    user = await actors.user()
    deleted = await client.delete(f"/api-internal/v1/users/{user['id']}", headers=admin["headers"])
    assert deleted.status_code == 204
    me = await client.get(ME, headers=user["headers"])
    assert me.status_code == 401


async def test_expired_tokens(app: Any, client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    expired = create_access_token(TEST_SECRET, user["id"], ttl_s=-5)
    response = await client.get(ME, headers=bearer(expired))
    assert response.status_code == 401
    assert response.json() == {"detail": "Access token expired", "code": "token_expired"}

    state = app.state.enclava
    async with transaction(state.session_factory) as session:
        row = await session.get(User, user["id"])
        assert row is not None
        _, refresh_token = await service.issue_tokens(
            session, secret_key=TEST_SECRET, user=row, access_ttl_s=60, refresh_ttl_s=-5
        )
    response = await client.post(REFRESH, json={"refresh_token": refresh_token})
    assert response.status_code == 401 and response.json()["code"] == "refresh_expired"


def _forged(user_id: uuid.UUID, **changes: Any) -> str:
    now = utcnow()
    claims: dict[str, Any] = {
        "sub": str(user_id),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "typ": "access",
    }
    secret = changes.pop("secret", TEST_SECRET)
    algorithm = changes.pop("algorithm", "HS256")
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(claims, secret, algorithm=algorithm)


BAD_ACCESS_TOKENS = [
    ("garbage", lambda uid: "garbage"),
    ("three-dots", lambda uid: "a.b.c"),
    ("word-bearer", lambda uid: "Bearer"),
    ("bad-sig", lambda uid: _forged(uid, secret="another-secret-" + "x" * 40)),
    ("wrong-audience", lambda uid: _forged(uid, aud="someone-else")),
    ("wrong-issuer", lambda uid: _forged(uid, iss="elsewhere")),
    ("wrong-type", lambda uid: _forged(uid, typ="refresh")),
    ("bad-subject", lambda uid: _forged(uid, sub="not-a-uuid")),
    ("no-subject", lambda uid: _forged(uid, sub=None)),
    ("no-expiry", lambda uid: _forged(uid, exp=None)),
    ("bad-session-id", lambda uid: _forged(uid, sid="nope")),
    ("unknown-session", lambda uid: _forged(uid, sid=str(uuid.uuid4()))),
    ("unknown-user", lambda uid: _forged(uuid.uuid4())),
    (
        "alg-none",
        lambda uid: jwt.encode({"sub": str(uid), "typ": "access"}, None, algorithm="none"),
    ),
    ("refresh-token-as-access", lambda uid: "ert_" + "a" * 43),
    ("huge", lambda uid: "x" * 5000),
    ("non-ascii", lambda uid: "é€😀"),
]


async def test_bad_access_tokens_get_a_clear_401(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    for case, make_token in BAD_ACCESS_TOKENS:
        token = make_token(user["id"])
        response = await client.get(ME, headers={"Authorization": f"Bearer {token}".encode()})
        assert response.status_code == 401, (case, response.text)
        body = response.json()
        assert set(body) == {"detail", "code"} and body["detail"], case
        assert response.headers["www-authenticate"] == "Bearer", case


MALFORMED_HEADERS = [
    "",
    "Bearer",
    "Bearer ",
    "Basic dXNlcjpwYXNz",
    "Token abc",
    "Bearer " + "a" * 100_000,
]


async def test_malformed_authorization_headers(client: httpx.AsyncClient) -> None:
    for header in MALFORMED_HEADERS:
        response = await client.get(ME, headers={"Authorization": header})
        assert response.status_code == 401, header[:20]
        assert response.json()["code"] in ("missing_credentials", "invalid_credentials")


async def test_bad_refresh_tokens(client: httpx.AsyncClient) -> None:
    for token in ("", "nope", "ert_", "ert_" + "x" * 43, "ek_" + "a" * 43):
        response = await client.post(REFRESH, json={"refresh_token": token})
        assert response.status_code == 401, token
        assert response.json()["code"] == "invalid_refresh_token", token
    too_long = await client.post(REFRESH, json={"refresh_token": "ert_" + "x" * 2000})
    assert too_long.status_code == 422


async def test_oversized_headers_on_a_real_server(settings: Any) -> None:
    """Through a real HTTP server: a long credential is a clear 401 from Enclava, and a header
    block beyond what the server parses is refused by the server itself, never a 500."""
    import asyncio

    from enclava.app import create_app
    from enclava.testing.server import serve_in_thread

    def run() -> tuple[int, int, int]:
        with (
            serve_in_thread(create_app(settings)) as base_url,
            httpx.Client(base_url=base_url) as http,
        ):
            long = http.get(ME, headers={"Authorization": "Bearer " + "a" * 8000})
            huge = http.get(ME, headers={"Authorization": "Bearer " + "a" * 200_000})
            many = http.get(ME, headers={f"X-Filler-{n}": "f" * 100 for n in range(400)})
            return long.status_code, huge.status_code, many.status_code

    long, huge, many = await asyncio.to_thread(run)
    assert long == 401
    assert 400 <= huge < 500 and 400 <= many < 500
