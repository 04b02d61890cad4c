from __future__ import annotations

import httpx

from tests.conftest import PASSWORD, Actors


async def test_login_and_me(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user("Someone@Example.com")
    response = await client.get("/api-internal/v1/auth/me", headers=user["headers"])
    assert response.status_code == 200
    assert response.json()["email"] == "someone@example.com"
    assert user["tokens"]["token_type"] == "bearer"
    assert user["tokens"]["refresh_token"].startswith("ert_")


async def test_wrong_password_and_unknown_email_look_the_same(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    wrong = await client.post(
        "/api-internal/v1/auth/login", json={"email": user["email"], "password": "not-it-at-all"}
    )
    unknown = await client.post(
        "/api-internal/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_api_key_is_not_a_session_token(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    response = await client.get("/api-internal/v1/auth/me", headers=key["headers"])
    assert response.status_code == 401
