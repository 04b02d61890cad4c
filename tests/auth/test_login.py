from __future__ import annotations

from typing import Any

import httpx
from argon2 import PasswordHasher
from sqlalchemy import select

from enclava.auth import passwords
from enclava.db import transaction
from enclava.models import AuditLog, User
from tests.conftest import PASSWORD, Actors, StartApp

LOGIN = "/api-internal/v1/auth/login"


async def _audit_rows(app: Any, action: str) -> list[AuditLog]:
    async with transaction(app.state.enclava.session_factory) as session:
        query = select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.created_at)
        return list((await session.execute(query)).scalars())


async def test_login_and_me(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user("Someone@Example.com")
    response = await client.get("/api-internal/v1/auth/me", headers=user["headers"])
    assert response.status_code == 200
    assert response.json()["email"] == "someone@example.com"
    assert user["tokens"]["token_type"] == "bearer"
    assert user["tokens"]["refresh_token"].startswith("ert_")
    assert user["tokens"]["expires_in"] == 900


async def test_wrong_password_and_unknown_email_look_the_same(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    wrong = await client.post(LOGIN, json={"email": user["email"], "password": "not-it-at-all"})
    unknown = await client.post(LOGIN, json={"email": "nobody@example.com", "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert (
        wrong.json()
        == unknown.json()
        == {
            "detail": "Incorrect email or password",
            "code": "invalid_credentials",
        }
    )


async def test_api_key_is_not_a_session_token(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    response = await client.get("/api-internal/v1/auth/me", headers=key["headers"])
    assert response.status_code == 401
    assert "API keys are for /api/v1" in response.json()["detail"]


async def test_login_audits_success_and_failure_without_the_password(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    await client.post(LOGIN, json={"email": user["email"], "password": "wrong password 1"})
    await client.post(LOGIN, json={"email": "ghost@example.com", "password": "wrong password 2"})

    rows = await _audit_rows(app, "auth.login")
    assert [(r.success, r.details.get("reason")) for r in rows] == [
        (True, None),
        (False, "wrong_password"),
        (False, "unknown_email"),
    ]
    assert rows[1].user_id == user["id"] and rows[2].user_id is None
    assert rows[1].ip_address == "127.0.0.1"
    assert all("wrong password" not in str(r.details) for r in rows)


async def test_disabled_user_cannot_sign_in(app: Any, client: httpx.AsyncClient) -> None:
    from enclava.auth import service

    async with transaction(app.state.enclava.session_factory) as session:
        user = await service.create_user(session, email="off@example.com", password=PASSWORD)
        user.is_active = False
    response = await client.post(LOGIN, json={"email": "off@example.com", "password": PASSWORD})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_credentials"


async def test_password_is_rehashed_on_login_when_parameters_change(
    app: Any, client: httpx.AsyncClient
) -> None:
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1)
    async with transaction(app.state.enclava.session_factory) as session:
        session.add(User(email="old@example.com", password_hash=weak.hash(PASSWORD), role="user"))
    assert passwords.needs_rehash(weak.hash(PASSWORD))

    response = await client.post(LOGIN, json={"email": "old@example.com", "password": PASSWORD})
    assert response.status_code == 200

    async with transaction(app.state.enclava.session_factory) as session:
        stored = (await session.execute(select(User.password_hash))).scalar_one()
    assert stored.startswith("$argon2id$")
    assert not passwords.needs_rehash(stored)
    assert passwords.verify_password(stored, PASSWORD)


async def test_account_lockout_after_repeated_failures(make_app: StartApp) -> None:
    app, client = await make_app(login_max_failures_per_account=3, login_lockout_s=600)
    user = await Actors(app, client).user()
    for _ in range(3):
        response = await client.post(LOGIN, json={"email": user["email"], "password": "nope nope"})
        assert response.status_code == 401

    # Locked: even the right password is refused, with a hint when to come back.
    locked = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert locked.status_code == 429
    assert locked.json()["code"] == "login_locked"
    assert locked.headers["retry-after"] == "600"

    # Unknown emails lock the same way, so a lockout does not reveal who has an account.
    for _ in range(3):
        await client.post(LOGIN, json={"email": "ghost@example.com", "password": "nope nope"})
    ghost = await client.post(LOGIN, json={"email": "ghost@example.com", "password": PASSWORD})
    assert ghost.status_code == 429 and ghost.json() == locked.json()

    # The lockout is audited once, not once per refused attempt.
    for _ in range(3):
        await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    reasons = [r.details.get("reason") for r in await _audit_rows(app, "auth.login")]
    assert reasons.count("locked_out") == 2


async def test_success_clears_the_account_counter(make_app: StartApp) -> None:
    app, client = await make_app(login_max_failures_per_account=3)
    user = await Actors(app, client).user()
    for _ in range(2):
        await client.post(LOGIN, json={"email": user["email"], "password": "nope nope"})
    assert (
        await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    ).status_code == 200
    for _ in range(2):
        await client.post(LOGIN, json={"email": user["email"], "password": "nope nope"})
    ok = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert ok.status_code == 200


async def test_ip_lockout_across_accounts(make_app: StartApp) -> None:
    app, client = await make_app(login_max_failures_per_account=100, login_max_failures_per_ip=4)
    user = await Actors(app, client).user()
    for n in range(4):
        response = await client.post(
            LOGIN, json={"email": f"probe{n}@example.com", "password": "nope nope"}
        )
        assert response.status_code == 401
    response = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert response.status_code == 429
    assert response.json()["code"] == "login_locked"


async def test_concurrent_guesses_cannot_pass_the_lockout(make_app: StartApp) -> None:
    import asyncio

    app, client = await make_app(login_max_failures_per_account=3)
    user = await Actors(app, client).user()
    responses = await asyncio.gather(
        *(
            client.post(LOGIN, json={"email": user["email"], "password": f"guess {n}"})
            for n in range(10)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [401] * 3 + [429] * 7


async def test_malformed_login_bodies_are_422_not_500(client: httpx.AsyncClient) -> None:
    for body in ({}, {"email": "a@example.com"}, {"email": "x" * 400, "password": "p"}):
        response = await client.post(LOGIN, json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
    broken = await client.post(
        LOGIN, content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 422
