"""Tenant isolation, driven by the OpenAPI document.

User A creates one resource of every kind whose creation route exists (``resources.FACTORIES``;
routes that have not landed yet are skipped). Then user B calls every operation of both APIs
that takes an id in its path, once with A's ids and once with random ones: both must answer
alike (404, or the same 403 for an admin-only route), with nothing of A in the body. B's list
operations must not show A's resources, A's resources must survive B's attempts, and A calling
with random ids gets 404 too.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import APIRouter
from pydantic import BaseModel

from enclava.auth.dependencies import UserSubject
from enclava.auth.subject import ALL_SCOPES
from enclava.errors import NotFoundError
from tests.conftest import Actors
from tests.security.openapi_probe import (
    INTERNAL,
    SEGMENT_KINDS,
    Operation,
    Request,
    operations,
)
from tests.security.resources import FACTORIES, Factory, chat_model, create_resources

NO_ACCESS_CODES = {"not_found", "admin_required"}
# Operations that legitimately create or change something under a name chosen in the path
# (an upsert), so a random value there is not "someone else's id". Admin-only ones need no
# entry: B is not an administrator.
NAME_KEYED_ROUTES: set[tuple[str, str]] = set()


def _is_no_access(code: object) -> bool:
    # "not_found" or a resource-specific "<thing>_not_found"; what matters is that A's ids and
    # random ids get the very same answer, checked below.
    return code in NO_ACCESS_CODES or (isinstance(code, str) and code.endswith("_not_found"))


def credentials(operation: Operation, user: dict[str, Any], key: dict[str, Any]) -> dict[str, str]:
    return key["headers"] if operation.is_public else user["headers"]


async def call(
    client: httpx.AsyncClient,
    operation: Operation,
    path: str,
    request: Request,
    headers: dict[str, str],
) -> httpx.Response:
    return await client.request(operation.method, path, headers=headers, **request.kwargs())


def outcome(response: httpx.Response) -> tuple[int, str | None]:
    try:
        body = response.json()
    except ValueError:
        return response.status_code, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return response.status_code, body["error"].get("code")
    return response.status_code, body.get("code") if isinstance(body, dict) else None


@dataclass
class Tenants:
    alice: dict[str, Any]
    bob: dict[str, Any]
    alice_key: dict[str, Any]
    bob_key: dict[str, Any]
    marker: str
    alice_ids: dict[str, str]


async def make_tenants(
    client: httpx.AsyncClient, openapi: dict[str, Any], actors: Actors, factories: list[Factory]
) -> Tenants:
    alice = await actors.user()
    bob = await actors.user()
    alice_key = await actors.api_key(alice, scopes=sorted(ALL_SCOPES))
    bob_key = await actors.api_key(bob, scopes=sorted(ALL_SCOPES))
    marker = f"tenant-a-{uuid.uuid4().hex[:10]}"
    model = await chat_model(client, alice_key["headers"])
    ids = await create_resources(client, openapi, alice, marker, model, factories)
    ids.setdefault("api_key", str(alice_key["id"]))
    return Tenants(alice, bob, alice_key, bob_key, marker, ids)


async def isolation_problems(
    client: httpx.AsyncClient, openapi: dict[str, Any], tenants: Tenants
) -> tuple[list[str], list[str]]:
    """Every way B can see or touch A's resources (and the id routes probed)."""
    problems: list[str] = []
    probed: list[str] = []
    t = tenants
    for operation in operations(openapi):
        if not (operation.is_public or operation.is_internal):
            continue
        request = operation.minimal_request()
        bob_headers = credentials(operation, t.bob, t.bob_key)
        label = f"{operation.method} {operation.path}"
        if not operation.path_params:
            if operation.method == "GET":
                response = await call(client, operation, operation.path, request, bob_headers)
                leaked = [i for i in t.alice_ids.values() if i in response.text]
                if t.marker in response.text or leaked:
                    problems.append(f"{label}: B's list shows A's resources")
            continue
        random_values = request.path_values
        alice_values = dict(random_values)
        for param in operation.path_params:
            kind = operation.kind_of(param["name"])
            if kind in t.alice_ids:
                alice_values[param["name"]] = t.alice_ids[kind]
        probed.append(label)
        random_response = await call(
            client, operation, operation.fill(random_values), request, bob_headers
        )
        if random_response.status_code < 300:
            if (operation.method, operation.path) not in NAME_KEYED_ROUTES:
                problems.append(f"{label}: {random_response.status_code} for a random id")
            continue
        expected = outcome(random_response)
        # A body the schema cannot describe fully may fail validation before any lookup; that
        # is fine as long as A's ids get the very same answer (checked below).
        rejected_body = expected[0] == 422
        if not rejected_body and (expected[0] not in (403, 404) or not _is_no_access(expected[1])):
            problems.append(f"{label}: random id gave {random_response.text[:200]}")
            continue
        if alice_values != random_values:
            response = await call(
                client, operation, operation.fill(alice_values), request, bob_headers
            )
            if outcome(response) != expected or t.marker in response.text:
                problems.append(
                    f"{label}: A's id gave {response.status_code} {response.text[:200]}"
                )
        own = await call(
            client,
            operation,
            operation.fill(random_values),
            request,
            credentials(operation, t.alice, t.alice_key),
        )
        if outcome(own) != expected:
            problems.append(f"{label}: owner with a random id got {own.text[:200]}")
    # Nothing B tried changed A's resources: A still reads each one.
    for operation in operations(openapi):
        kinds = [operation.kind_of(p["name"]) for p in operation.path_params]
        if operation.method != "GET" or not operation.is_internal or len(kinds) != 1:
            continue
        if kinds[0] in t.alice_ids and kinds[0] != "user":
            path = operation.fill({operation.path_params[0]["name"]: t.alice_ids[kinds[0]]})
            response = await client.get(path, headers=t.alice["headers"])
            if response.status_code != 200:
                problems.append(f"{operation.path}: A lost its {kinds[0]} ({response.status_code})")
    return problems, probed


async def test_other_users_resources_are_invisible_on_every_route(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    openapi = app.openapi()
    tenants = await make_tenants(client, openapi, actors, FACTORIES)
    problems, probed = await isolation_problems(client, openapi, tenants)
    print(f"tenant isolation: {len(probed)} id routes probed, A holds {sorted(tenants.alice_ids)}")
    assert problems == []
    assert len(probed) >= 2  # every operation with an id in its path


class NoteCreate(BaseModel):
    name: str


async def test_the_probe_catches_a_route_that_forgets_the_owner(
    app: Any, client: httpx.AsyncClient, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deliberately leaky router proves the probe above can fail."""
    notes: dict[str, dict[str, str]] = {}
    router = APIRouter(prefix=f"{INTERNAL}/zz-notes")

    @router.post("", status_code=201)
    async def create_note(body: NoteCreate, subject: UserSubject) -> dict[str, str]:
        note = {"id": str(uuid.uuid4()), "owner": str(subject.user_id), "name": body.name}
        notes[note["id"]] = note
        return note

    @router.get("")
    async def list_notes(subject: UserSubject) -> list[dict[str, str]]:
        return list(notes.values())  # the bug: every tenant's notes

    @router.get("/{note_id}")
    async def read_note(note_id: uuid.UUID, subject: UserSubject) -> dict[str, str]:
        note = notes.get(str(note_id))  # the bug: no owner check
        if note is None:
            raise NotFoundError("No such note")
        return note

    app.include_router(router)
    app.openapi_schema = None
    monkeypatch.setitem(SEGMENT_KINDS, "zz-notes", "zz_note")
    factories = [
        *FACTORIES,
        Factory("zz_note", "POST", f"{INTERNAL}/zz-notes", lambda m: {"name": m}),
    ]
    openapi = app.openapi()
    tenants = await make_tenants(client, openapi, actors, factories)
    problems, _ = await isolation_problems(client, openapi, tenants)
    assert any(
        p.startswith(f"GET {INTERNAL}/zz-notes/{{note_id}}: A's id gave 200") for p in problems
    )
    assert any(p.startswith(f"GET {INTERNAL}/zz-notes: B's list") for p in problems)
