"""The metered endpoints are served by plain Starlette routes ahead of FastAPI's routers
(``enclava.llm.router.direct_routes``); the FastAPI routes they shadow are what the OpenAPI
document describes. Both must answer every request alike: same status, error, headers and
counting."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from enclava.testing.mock_upstream import Simulator
from tests.conftest import Actors
from tests.llm.conftest import CHAT, key_for

CHAT_URL = "/api/v1/chat/completions"
EMBEDDINGS_URL = "/api/v1/embeddings"
EMBED = {"model": "embed-model", "input": ["one", "two"]}
# Headers whose values depend on the request, not on the route that served it.
_VARYING = {"x-request-id", "content-length", "date", "x-ratelimit-remaining"}


def _direct_routes(app: Any) -> list[Route]:
    return [
        route
        for route in app.router.routes
        if type(route) is Route and route.path in (CHAT_URL, EMBEDDINGS_URL)
    ]


@contextmanager
def fastapi_routes_only(app: Any) -> Iterator[None]:
    """Take the direct routes out, so FastAPI's routes serve the calls."""
    direct = _direct_routes(app)
    assert len(direct) == 2
    at = app.router.routes.index(direct[0])
    for route in direct:
        app.router.routes.remove(route)
    try:
        yield
    finally:
        app.router.routes[at:at] = direct


def _shape(response: httpx.Response) -> dict[str, Any]:
    """What a client can observe of an answer, minus what differs from call to call."""
    headers = {
        name: value
        for name, value in response.headers.items()
        if name not in _VARYING and not name.startswith("x-ratelimit-reset")
    }
    shape: dict[str, Any] = {"status": response.status_code, "headers": headers}
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        if "error" in body:
            shape["error"] = body["error"]
        else:
            shape["keys"] = sorted(body)
            shape["usage"] = body.get("usage")
    else:
        shape["text_end"] = response.text[-14:]
    return shape


async def test_the_direct_routes_come_first_and_skip_fastapi_dependency_solving(
    app: Any,
    client: httpx.AsyncClient,
    actors: Actors,
    mock_upstream: Simulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fastapi import routing

    key = await key_for(actors)
    first_router = next(
        index for index, route in enumerate(app.router.routes) if type(route) is not Route
    )
    assert all(app.router.routes.index(route) < first_router for route in _direct_routes(app))
    assert CHAT_URL in app.openapi()["paths"] and EMBEDDINGS_URL in app.openapi()["paths"]

    solved: list[str] = []
    original = routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(routing, "solve_dependencies", counting)
    assert (await client.post(CHAT_URL, json=CHAT, headers=key["headers"])).status_code == 200
    assert (await client.post(EMBEDDINGS_URL, json=EMBED, headers=key["headers"])).status_code == (
        200
    )
    assert solved == []
    with fastapi_routes_only(app):
        assert (await client.post(CHAT_URL, json=CHAT, headers=key["headers"])).status_code == 200
    assert solved == [CHAT_URL]


async def test_direct_and_fastapi_routes_answer_alike(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    key = await key_for(actors, rate_limit_per_minute=1000)
    unscoped = await key_for(actors, scopes=["llm.models"])
    json_headers = {**key["headers"], "content-type": "application/json"}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("chat", CHAT_URL, {"json": CHAT, "headers": key["headers"]}),
        ("stream", CHAT_URL, {"json": {**CHAT, "stream": True}, "headers": key["headers"]}),
        ("embeddings", EMBEDDINGS_URL, {"json": EMBED, "headers": key["headers"]}),
        ("malformed", CHAT_URL, {"content": b"{nope", "headers": json_headers}),
        ("not an object", EMBEDDINGS_URL, {"content": b"[1]", "headers": json_headers}),
        ("no credentials", CHAT_URL, {"json": CHAT}),
        (
            "bad key",
            CHAT_URL,
            {"json": CHAT, "headers": {"Authorization": "Bearer ek_" + "x" * 40}},
        ),
        ("missing scope", CHAT_URL, {"json": CHAT, "headers": unscoped["headers"]}),
        ("unknown model", CHAT_URL, {"json": {**CHAT, "model": "nope"}, "headers": key["headers"]}),
        (
            "wrong kind",
            EMBEDDINGS_URL,
            {"json": {**EMBED, "model": "chat-model"}, "headers": key["headers"]},
        ),
    ]
    for name, url, request in cases:
        direct = await client.post(url, **request)
        remaining = direct.headers.get("x-ratelimit-remaining")
        with fastapi_routes_only(app):
            routed = await client.post(url, **request)
        assert _shape(direct) == _shape(routed), name
        if remaining is not None:  # each served call counted once, whichever route served it
            assert int(routed.headers["x-ratelimit-remaining"]) == int(remaining) - 1, name
    # A method the endpoints do not take is refused the same way.
    direct = await client.get(CHAT_URL, headers=key["headers"])
    with fastapi_routes_only(app):
        routed = await client.get(CHAT_URL, headers=key["headers"])
    assert direct.status_code == routed.status_code == 405
    assert direct.json() == routed.json()
