"""CSRF: every state-changing request a browser could send with our cookies is checked
(origin and double-submit token); bearer-token API calls are not."""

from __future__ import annotations

import re

import httpx

from enclava.security.csrf import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import PASSWORD, Actors
from tests.security.conftest import AppClient


async def form_token(client: httpx.AsyncClient) -> str:
    page = await client.get("/")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    return match.group(1)


async def sign_in(client: httpx.AsyncClient, email: str) -> str:
    token = await form_token(client)
    response = await client.post(
        "/login", data={"email": email, "password": PASSWORD, "csrf_token": token}
    )
    assert response.status_code == 303, response.text
    assert client.cookies.get(SESSION_COOKIE)
    return token


async def test_same_origin_form_with_token_is_accepted(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    token = await form_token(client)
    response = await client.post(
        "/login",
        data={"email": user["email"], "password": PASSWORD, "csrf_token": token},
        headers={"Origin": "http://testserver", "Referer": "http://testserver/"},
    )
    assert response.status_code == 303


async def test_cross_site_requests_are_refused_even_with_a_valid_token(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    token = await sign_in(client, user["email"])
    form = {"csrf_token": token}
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Referer": "https://evil.example/page"},
        {"Origin": "http://testserver.evil.example"},
    ):
        response = await client.post("/logout", data=form, headers=headers)
        assert response.status_code == 403, headers
        assert response.json()["code"] == "csrf_failed"
    # Still signed in: the forged sign-out did nothing.
    assert user["email"] in (await client.get("/")).text


async def test_missing_or_wrong_token_is_refused(client: httpx.AsyncClient, actors: Actors) -> None:
    user = await actors.user()
    token = await sign_in(client, user["email"])
    for form in ({}, {"csrf_token": "wrong"}, {"csrf_token": token + "x"}):
        response = await client.post("/logout", data=form)
        assert response.status_code == 403
    client.cookies.delete(CSRF_COOKIE)
    response = await client.post("/logout", data={"csrf_token": token})
    assert response.status_code == 403


async def test_token_in_header_or_query_for_scripts_and_multipart(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    token = await sign_in(client, user["email"])
    by_header = await client.post("/logout", headers={"X-CSRF-Token": token})
    assert by_header.status_code == 303
    assert not client.cookies.get(SESSION_COOKIE)  # signed out for real
    # Multipart bodies are not buffered by the check: the token travels in the query string.
    upload = {"file": ("a.txt", b"hello")}
    refused = await client.post("/rag/upload", files=upload)
    assert refused.status_code == 403
    passed = await client.post("/rag/upload", params={"csrf_token": token}, files=upload)
    assert passed.status_code != 403


async def test_cookie_authenticated_api_calls_are_checked_too(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    await sign_in(client, user["email"])
    # The internal API authenticates by bearer token only; were a cookie ever enough, a
    # cross-site request riding on it would still stop here.
    response = await client.post(
        "/api-internal/v1/users",
        json={"email": "x@example.com", "password": PASSWORD},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403 and response.json()["code"] == "csrf_failed"


async def test_bearer_token_calls_are_not_affected(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    response = await client.post(
        "/api-internal/v1/users",
        json={"email": "new@example.com", "password": PASSWORD},
        headers={**admin["headers"], "Origin": "https://other-tool.example"},
    )
    assert response.status_code == 201


async def test_configured_origins_are_trusted(app_client: AppClient) -> None:
    async with app_client(cors_origins=["https://admin.example.com"]) as (app, client):
        user = await Actors(app, client).user()
        token = await form_token(client)
        response = await client.post(
            "/login",
            data={"email": user["email"], "password": PASSWORD, "csrf_token": token},
            headers={"Origin": "https://admin.example.com"},
        )
        assert response.status_code == 303
