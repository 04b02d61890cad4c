from __future__ import annotations

import re

import httpx

from tests.conftest import PASSWORD


def _csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert match, "form has no CSRF token"
    return match.group(1)


async def test_first_run_offers_setup_and_creates_admin(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert 'id="setup-form"' in page.text
    response = await client.post(
        "/setup",
        data={
            "email": "Owner@Example.com",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "csrf_token": _csrf(page.text),
        },
    )
    assert response.status_code == 303
    assert "enclava_session" in response.cookies
    home = await client.get("/")
    assert "owner@example.com" in home.text and "(admin)" in home.text

    # The form is one-time: with a user present, / is the sign-in page and /setup refuses.
    client.cookies.delete("enclava_session")
    page = await client.get("/")
    assert 'id="login-form"' in page.text and 'id="setup-form"' not in page.text
    again = await client.post(
        "/setup",
        data={
            "email": "intruder@example.com",
            "password": PASSWORD,
            "password_confirm": PASSWORD,
            "csrf_token": _csrf(page.text),
        },
    )
    assert again.status_code == 409
    login = await client.post(
        "/api-internal/v1/auth/login", json={"email": "intruder@example.com", "password": PASSWORD}
    )
    assert login.status_code == 401


async def test_setup_requires_csrf_token(client: httpx.AsyncClient) -> None:
    await client.get("/")
    response = await client.post(
        "/setup",
        data={"email": "a@example.com", "password": PASSWORD, "password_confirm": PASSWORD},
    )
    assert response.status_code == 403
    assert 'id="setup-form"' in (await client.get("/")).text


async def test_setup_rejects_mismatched_and_weak_passwords(client: httpx.AsyncClient) -> None:
    page = await client.get("/")
    token = _csrf(page.text)
    mismatch = await client.post(
        "/setup",
        data={
            "email": "a@example.com",
            "password": PASSWORD,
            "password_confirm": "other-password",
            "csrf_token": token,
        },
    )
    assert mismatch.status_code == 400 and "do not match" in mismatch.text
    weak = await client.post(
        "/setup",
        data={
            "email": "a@example.com",
            "password": "short",
            "password_confirm": "short",
            "csrf_token": token,
        },
    )
    assert weak.status_code == 400
    assert 'id="setup-form"' in (await client.get("/")).text
