"""Forged, confused and misplaced credentials are refused, on every authenticated route."""

from __future__ import annotations

import base64
import json
import uuid
import warnings
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from enclava.auth.tokens import AUDIENCE, ISSUER
from tests.conftest import TEST_SECRET, Actors


def b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def claims(user_id: uuid.UUID, **overrides: Any) -> dict[str, Any]:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "sub": str(user_id),
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(minutes=5)).timestamp()),
        "typ": "access",
        "jti": uuid.uuid4().hex,
    }
    values.update(overrides)
    return values


SAMPLE_ROUTES = {("GET", "/api-internal/v1/auth/me"), ("POST", "/api-internal/v1/users")}


def _hs512(payload: dict[str, Any]) -> str:
    with warnings.catch_warnings():  # the test secret is short for SHA-512; irrelevant here
        warnings.simplefilter("ignore")
        return jwt.encode(payload, TEST_SECRET, "HS512")


def forged_tokens(user_id: uuid.UUID) -> dict[str, str]:
    good = claims(user_id)
    return {
        "alg none": f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(good)}.",
        "alg None, with signature": f"{b64({'alg': 'None'})}.{b64(good)}.c2ln",
        "other secret": jwt.encode(good, "not-the-server-secret-0123456789abcdef", "HS256"),
        "HS512 with the real secret": _hs512(good),
        "signature stripped": jwt.encode(good, TEST_SECRET, "HS256").rsplit(".", 1)[0] + ".",
        "payload swapped": ".".join(
            [
                jwt.encode(good, TEST_SECRET, "HS256").split(".")[0],
                b64({**good, "sub": str(uuid.uuid4())}),
                jwt.encode(good, TEST_SECRET, "HS256").split(".")[2],
            ]
        ),
        "expired": jwt.encode(
            claims(user_id, exp=int(datetime.now(UTC).timestamp()) - 60), TEST_SECRET, "HS256"
        ),
        "wrong audience": jwt.encode(claims(user_id, aud="someone-else"), TEST_SECRET, "HS256"),
        "wrong issuer": jwt.encode(claims(user_id, iss="evil"), TEST_SECRET, "HS256"),
        "refresh type": jwt.encode(claims(user_id, typ="refresh"), TEST_SECRET, "HS256"),
        "no expiry": jwt.encode(
            {k: v for k, v in good.items() if k != "exp"}, TEST_SECRET, "HS256"
        ),
        "garbage": "not.a.jwt",
    }


async def authenticated_routes(app: Any, client: httpx.AsyncClient) -> list[tuple[str, str]]:
    """Every internal-API operation that answers 401 without credentials (read from the OpenAPI
    document and probed, so routes added later are covered without being listed)."""
    operations = []
    for path, item in app.openapi()["paths"].items():
        if not path.startswith("/api-internal/v1"):
            continue
        for method in item:
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            response = await client.request(method.upper(), _fill(path), json={})
            if response.status_code == 401:
                operations.append((method.upper(), path))
    return operations


def _fill(path: str) -> str:
    parts = []
    for segment in path.split("/"):
        parts.append(str(uuid.uuid4()) if segment.startswith("{") else segment)
    return "/".join(parts)


async def test_forged_and_confused_jwts_are_refused_everywhere(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    operations = await authenticated_routes(app, client)
    assert set(SAMPLE_ROUTES) <= set(operations)
    # Every forgery on a reading and a writing route; the two classic ones (no algorithm, a
    # signature made with another secret) on every authenticated route.
    everywhere = {"alg none", "other secret"}
    for name, token in forged_tokens(admin["id"]).items():
        targets = operations if name in everywhere else sorted(SAMPLE_ROUTES)
        for method, path in targets:
            response = await client.request(
                method, _fill(path), headers={"Authorization": f"Bearer {token}"}, json={}
            )
            assert response.status_code == 401, (name, method, path, response.text)
            assert response.json()["code"] in {"invalid_token", "token_expired"}, name
    # The genuine token still works, so the refusals above were about the forgeries.
    me = await client.get("/api-internal/v1/auth/me", headers=admin["headers"])
    assert me.status_code == 200


async def test_refresh_token_is_not_an_access_token(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    refresh = user["tokens"]["refresh_token"]
    response = await client.get(
        "/api-internal/v1/auth/me", headers={"Authorization": f"Bearer {refresh}"}
    )
    assert response.status_code == 401


async def test_credentials_in_the_url_are_refused(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    access = user["tokens"]["access_token"]
    refresh = user["tokens"]["refresh_token"]
    cases = [
        ("/api/v1/models", {"api_key": key["key"]}),
        ("/api/v1/models", {"key": key["key"]}),
        ("/api/v1/models", {"apikey": "anything"}),
        ("/api/v1/models", {"q": f"Bearer {key['key']}"}),
        ("/api-internal/v1/auth/me", {"access_token": access}),
        ("/api-internal/v1/auth/me", {"token": access}),
        ("/api-internal/v1/auth/me", {"t": refresh}),
        ("/", {"session": access}),
    ]
    for path, params in cases:
        # Even alongside a valid header: the key in the URL is already exposed and must not work.
        response = await client.get(path, params=params, headers=key["headers"])
        assert response.status_code == 400, (path, params)
        body = response.json()
        code = body["error"]["code"] if path.startswith("/api/v1") else body["code"]
        assert code == "credentials_in_query"
        assert key["key"] not in response.text and access not in response.text


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer " + "a" * 5000,
        "Token abc",
        "bearer\tabc",
    ],
)
async def test_malformed_authorization_headers_are_401_not_500(
    client: httpx.AsyncClient, header: str
) -> None:
    for path in ("/api-internal/v1/auth/me", "/api-internal/v1/users"):
        response = await client.get(path, headers={"Authorization": header})
        assert response.status_code == 401, (path, header)


async def test_keys_and_tokens_work_only_on_their_own_api(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    internal = await client.get("/api-internal/v1/auth/me", headers=key["headers"])
    assert internal.status_code == 401
