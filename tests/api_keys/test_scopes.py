"""Scope enforcement on every public endpoint, discovered from the application's routes.

The routes are read from the app itself, so endpoints added later under ``/api/v1`` with
``require_scopes(...)`` (or ``ApiKeySubject``) are covered without touching this file. The
probe endpoints from ``tests/auth/probe.py`` are always included, which also checks that the
discovery finds what it should.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from enclava.app import PUBLIC_PREFIX, create_app
from enclava.auth.dependencies import ApiKeySubject, ScopeRequirement
from enclava.auth.subject import ALL_SCOPES
from enclava.config import Settings
from tests.auth.probe import public_probe
from tests.conftest import TEST_ENCRYPTION_KEY, TEST_SECRET, Actors, StartApp

_API_KEY_DEPENDENCY = get_args(ApiKeySubject)[1].dependency


@dataclass(frozen=True)
class PublicEndpoint:
    method: str
    path: str
    requires_key: bool
    scopes: frozenset[str]

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _dependencies(dependant: Dependant) -> Iterator[Dependant]:
    for child in dependant.dependencies:
        yield child
        yield from _dependencies(child)


def public_endpoints() -> list[PublicEndpoint]:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        environment="test",
        secret_key=TEST_SECRET,
        encryption_key=TEST_ENCRYPTION_KEY,
    )
    app = create_app(settings)  # no lifespan: only the route table is read
    app.include_router(public_probe)
    found = []
    # Routes of included routers, with the prefixes and dependencies of their inclusion.
    for route in iter_route_contexts(app.routes):
        path = route.path or ""
        if not isinstance(route.original_route, APIRoute) or not path.startswith(
            PUBLIC_PREFIX + "/"
        ):
            continue
        dependant = getattr(route, "dependant", None) or route.original_route.dependant
        calls = [d.call for d in _dependencies(dependant)]
        scopes = frozenset(
            scope for call in calls if isinstance(call, ScopeRequirement) for scope in call.scopes
        )
        requires_key = _API_KEY_DEPENDENCY in calls or bool(scopes)
        for method in sorted(route.methods or ()):
            found.append(PublicEndpoint(method, path, requires_key, scopes))
    return found


ENDPOINTS = public_endpoints()


def test_discovery_sees_the_probes() -> None:
    seen = {str(e): e.scopes for e in ENDPOINTS}
    assert seen["GET /api/v1/_probe/chat"] == {"llm.chat"}
    assert seen["POST /api/v1/_probe/rag/{collection_id}"] == {"rag.read", "rag.write"}
    assert seen["GET /api/v1/_probe/key"] == frozenset()


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
def test_every_public_endpoint_requires_an_api_key(endpoint: PublicEndpoint) -> None:
    assert endpoint.requires_key, f"{endpoint} is reachable without an API key"
    assert endpoint.scopes <= ALL_SCOPES, f"{endpoint} demands a scope no key can hold"


def _url(path: str) -> str:
    return re.sub(r"\{[^}]+\}", lambda _: str(uuid.uuid4()), path)


async def _call(client: Any, endpoint: PublicEndpoint, key: str | None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {} if endpoint.method in ("POST", "PUT", "PATCH") else None
    return await client.request(endpoint.method, _url(endpoint.path), headers=headers, json=body)


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=str)
async def test_scopes_are_enforced(endpoint: PublicEndpoint, make_app: StartApp) -> None:
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    user = await actors.user()

    anonymous = await _call(client, endpoint, None)
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["type"] == "authentication_error"

    for scope in sorted(endpoint.scopes):
        lacking = await actors.api_key(user, scopes=sorted(ALL_SCOPES - {scope}))
        denied = await _call(client, endpoint, lacking["key"])
        assert denied.status_code == 403, f"{endpoint} admitted a key without {scope}"
        assert denied.json()["error"]["code"] == "insufficient_scope"
        assert scope in denied.json()["error"]["message"]

    # Exactly the required scopes get past authorisation (the request itself may still be
    # invalid: an empty body, an unknown id), and nothing answers with a server error.
    exact = await actors.api_key(user, scopes=sorted(endpoint.scopes) or ["llm.models"])
    allowed = await _call(client, endpoint, exact["key"])
    assert allowed.status_code not in (401, 403), allowed.text
    assert allowed.status_code < 500, allowed.text
