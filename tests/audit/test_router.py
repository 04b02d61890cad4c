"""GET /audit-logs: who sees what, filters, pages and exports."""

from __future__ import annotations

import csv
import io
import json
from datetime import timedelta
from typing import Any

import httpx

from enclava.audit import service as audit
from enclava.db import transaction
from enclava.kit.time import utcnow
from tests.conftest import Actors

AUDIT = "/api-internal/v1/audit-logs"


async def _seed(app: Any, user_id: Any, n: int, action: str = "thing.done") -> None:
    async with transaction(app.state.enclava.session_factory) as session:
        for i in range(n):
            audit.record(
                session,
                action=action,
                user_id=user_id,
                resource_type="thing",
                resource_id=str(i),
                details={"n": i},
            )


async def test_admins_see_everything_users_their_own(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    alice = await actors.user()
    bob = await actors.user()
    await _seed(app, alice["id"], 2)
    await _seed(app, bob["id"], 3)

    everything = (await client.get(AUDIT, headers=admin["headers"])).json()
    # 3 sign-ins and 5 seeded rows.
    assert everything["total"] == 8
    assert {item["user_id"] for item in everything["items"]} == {
        str(admin["id"]),
        str(alice["id"]),
        str(bob["id"]),
    }

    mine = (await client.get(AUDIT, headers=alice["headers"])).json()
    assert mine["total"] == 3 and {i["user_id"] for i in mine["items"]} == {str(alice["id"])}
    # Asking for someone else's rows yields nothing, not their rows.
    theirs = await client.get(AUDIT, headers=alice["headers"], params={"user_id": str(bob["id"])})
    assert theirs.status_code == 200 and theirs.json()["total"] == 0
    as_admin = await client.get(AUDIT, headers=admin["headers"], params={"user_id": str(bob["id"])})
    assert as_admin.json()["total"] == 4


async def test_filters_and_pages(app: Any, client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    await _seed(app, admin["id"], 7, action="thing.done")
    await _seed(app, admin["id"], 2, action="thing.undone")

    done = (
        await client.get(AUDIT, headers=admin["headers"], params={"action": "thing.undone"})
    ).json()
    assert done["total"] == 2 and {i["action"] for i in done["items"]} == {"thing.undone"}
    things = (
        await client.get(AUDIT, headers=admin["headers"], params={"resource": "thing"})
    ).json()
    assert things["total"] == 9

    pages = [
        (
            await client.get(
                AUDIT,
                headers=admin["headers"],
                params={"resource": "thing", "page": page, "page_size": 4},
            )
        ).json()
        for page in (1, 2, 3, 4)
    ]
    assert [len(p["items"]) for p in pages] == [4, 4, 1, 0]
    ids = [i["id"] for p in pages for i in p["items"]]
    assert len(set(ids)) == 9
    created = [i["created_at"] for p in pages for i in p["items"]]
    assert created == sorted(created, reverse=True)

    future = (utcnow() + timedelta(hours=1)).isoformat()
    past = (utcnow() - timedelta(hours=1)).isoformat()
    assert (await client.get(AUDIT, headers=admin["headers"], params={"start": future})).json()[
        "total"
    ] == 0
    window = await client.get(
        AUDIT, headers=admin["headers"], params={"start": past, "end": future}
    )
    assert window.json()["total"] == 10


async def test_bad_filters_are_422(client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    for params in (
        {"start": "yesterday"},
        {"start": "2024-01-01T00:00:00"},  # no time zone
        {"page": 0},
        {"page_size": 100_000},
        {"user_id": "nope"},
        {"format": "xml"},
    ):
        response = await client.get(AUDIT, headers=admin["headers"], params=params)
        assert response.status_code == 422, params
    assert (await client.get(AUDIT)).status_code == 401


async def test_csv_and_jsonl_exports(app: Any, client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    user = await actors.user()
    await _seed(app, user["id"], 3)
    async with transaction(app.state.enclava.session_factory) as session:
        audit.record(session, action="=HYPERLINK(1)", user_id=user["id"], details={"note": "+x"})

    jsonl = await client.get(AUDIT, headers=admin["headers"], params={"format": "jsonl"})
    assert jsonl.status_code == 200
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    assert len(rows) == 6  # two sign-ins, three seeded, one more
    assert {r["action"] for r in rows} >= {"auth.login", "thing.done"}

    exported = await client.get(
        AUDIT, headers=user["headers"], params={"format": "csv", "page_size": 1}
    )
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(exported.text)))
    # The user's own rows only, and every one of them (page_size does not cut an export).
    assert len(table) == 5 and {r["user_id"] for r in table} == {str(user["id"])}
    formula = next(r for r in table if "HYPERLINK" in r["action"])
    assert formula["action"] == "'=HYPERLINK(1)"  # spreadsheets do not run it
    assert json.loads(formula["details"]) == {"note": "+x"}


async def test_large_export_is_complete(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    await _seed(app, admin["id"], 1203)
    response = await client.get(
        AUDIT, headers=admin["headers"], params={"format": "jsonl", "resource": "thing"}
    )
    ids = [json.loads(line)["id"] for line in response.text.splitlines()]
    assert len(ids) == len(set(ids)) == 1203


async def test_mutations_and_auth_events_are_audited_without_secrets(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    created = await client.post(
        "/api-internal/v1/api-keys", headers=admin["headers"], json={"name": "k"}
    )
    key_id, key = created.json()["id"], created.json()["key"]
    rotated = await client.post(
        f"/api-internal/v1/api-keys/{key_id}/rotate", headers=admin["headers"]
    )
    await client.delete(f"/api-internal/v1/api-keys/{key_id}", headers=admin["headers"])
    await client.post("/api-internal/v1/auth/logout", headers=admin["headers"])

    export = await client.get(
        AUDIT,
        headers=(await actors.user(role="admin"))["headers"],
        params={"format": "jsonl"},
    )
    rows = [json.loads(line) for line in export.text.splitlines()]
    actions = [r["action"] for r in reversed(rows)]
    assert actions == [
        "auth.login",
        "api_key.create",
        "api_key.rotate",
        "api_key.revoke",
        "auth.logout",
        "auth.login",
    ]
    assert {r["resource_id"] for r in rows if r["resource_type"] == "api_key"} == {key_id}
    text = export.text
    assert key not in text and rotated.json()["key"] not in text
    assert admin["tokens"]["refresh_token"] not in text
    assert all(r["request_id"] for r in rows)
