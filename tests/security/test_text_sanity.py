"""NUL characters and unpaired surrogates are a 400 on every route, never a database error."""

from __future__ import annotations

import json

import httpx
import pytest

from enclava.security.text_sanity import json_text_problem
from tests.conftest import PASSWORD, Actors


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (rb'{"a": "x\u0000y"}', "a NUL character"),
        (rb'{"a": "\ud800"}', "an unpaired surrogate"),
        (rb'{"a": "\udc00x"}', "an unpaired surrogate"),
        (rb'{"a": "\ud83d x \ude00"}', "an unpaired surrogate"),
        (rb'{"a": "\ud83d\ude00", "b": "\\\u0000"}', "a NUL character"),
        (rb'{"a": "ok"', None),
        (rb'{"a": "\ud83d\ude00 \u00e9 \u2028"}', None),  # a valid pair, ordinary escapes
        (rb'{"a": "\\u0000 is how JSON spells NUL"}', None),  # an escaped backslash, then text
        (rb'{"a": "\\\\u0000"}', None),
    ],
)
def test_escapes_are_read_like_a_json_parser(raw: bytes, problem: str | None) -> None:
    assert json_text_problem(raw) == problem
    if problem is None and raw.endswith(b"}"):
        json.loads(raw)  # the clean samples are valid JSON


async def test_nul_and_surrogates_are_400_in_each_shape(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    key = await actors.api_key(admin)
    body = (
        b'{"email": "a@example.com", "password": "'
        + PASSWORD.encode()
        + b'", "full_name": "a\\u0000"}'
    )
    internal = await client.post(
        "/api-internal/v1/users",
        content=body,
        headers={**admin["headers"], "Content-Type": "application/json"},
    )
    assert internal.status_code == 400
    assert internal.json()["code"] == "invalid_text"
    public = await client.post(
        "/api/v1/chat/completions",
        content=b'{"model": "m", "messages": [{"role": "user", "content": "\\udfff"}]}',
        headers={**key["headers"], "Content-Type": "application/json"},
    )
    assert public.status_code == 400
    assert public.json()["error"]["code"] == "invalid_text"
    for url in ("/api-internal/v1/users?search=a%00b", "/api-internal/v1/users/%00"):
        response = await client.get(url, headers=admin["headers"])
        assert response.status_code == 400, url
    form = await client.post(
        "/login",
        content=b"email=a%00%40example.com&password=x",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 400


async def test_clean_bodies_pass_unchanged(client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    name = "Zoë 😀 \\u0000 (literally)"
    response = await client.post(
        "/api-internal/v1/users",
        json={"email": "clean@example.com", "password": PASSWORD, "full_name": name},
        headers=admin["headers"],
    )
    assert response.status_code == 201, response.text
    assert response.json()["full_name"] == name
