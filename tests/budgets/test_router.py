"""/api-internal/v1/budgets: USD in the API, visibility per user, admin-set budgets protected."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Actors

URL = "/api-internal/v1/budgets"


async def test_user_budgets_their_own_key_and_sees_usd(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    response = await client.post(
        URL,
        json={
            "name": "key cap",
            "limit_usd": "12.5",
            "period": "daily",
            "api_key_id": str(key["id"]),
            "soft_thresholds": [90, 50],
        },
        headers=user["headers"],
    )
    assert response.status_code == 201, response.text
    budget = response.json()
    assert (
        budget["limit_usd"] == "12.5"
        and budget["spent_usd"] == "0"
        and budget["remaining_usd"] == "12.5"
    )
    assert budget["soft_thresholds"] == [50, 90] and budget["api_key_id"] == str(key["id"])
    own = await client.post(URL, json={"name": "me", "limit_usd": 100}, headers=user["headers"])
    assert own.status_code == 201 and own.json()["user_id"] == str(user["id"])

    listed = await client.get(URL, headers=user["headers"])
    assert {b["name"] for b in listed.json()} == {"key cap", "me"}
    patched = await client.patch(
        f"{URL}/{budget['id']}", json={"limit_usd": "20.000000001"}, headers=user["headers"]
    )
    assert patched.status_code == 200 and patched.json()["limit_usd"] == "20.000000001"
    deleted = await client.delete(f"{URL}/{budget['id']}", headers=user["headers"])
    assert deleted.status_code == 204
    assert (await client.get(f"{URL}/{budget['id']}", headers=user["headers"])).status_code == 404


async def test_other_users_budgets_are_404_and_admin_budgets_are_protected(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    alice, bob = await actors.user(), await actors.user()
    bob_key = await actors.api_key(bob)
    set_by_admin = await client.post(
        URL,
        json={"name": "cap", "limit_usd": 5, "user_id": str(alice["id"])},
        headers=admin["headers"],
    )
    assert set_by_admin.status_code == 201
    budget_id = set_by_admin.json()["id"]

    # Alice sees it but may not lift it.
    assert (await client.get(f"{URL}/{budget_id}", headers=alice["headers"])).status_code == 200
    lifted = await client.patch(
        f"{URL}/{budget_id}", json={"limit_usd": 500}, headers=alice["headers"]
    )
    assert lifted.status_code == 403 and lifted.json()["code"] == "budget_managed_by_admin"
    assert (await client.delete(f"{URL}/{budget_id}", headers=alice["headers"])).status_code == 403

    # Bob cannot see it, nor budget Alice, nor use Alice's ids for his keys.
    assert (await client.get(f"{URL}/{budget_id}", headers=bob["headers"])).status_code == 404
    assert (
        await client.patch(f"{URL}/{budget_id}", json={"name": "x"}, headers=bob["headers"])
    ).status_code == 404
    assert (await client.get(URL, headers=bob["headers"])).json() == []
    foreign = await client.post(
        URL, json={"name": "x", "limit_usd": 1, "user_id": str(alice["id"])}, headers=bob["headers"]
    )
    assert foreign.status_code == 404
    alice_key = await actors.api_key(alice)
    foreign_key = await client.post(
        URL,
        json={"name": "x", "limit_usd": 1, "api_key_id": str(alice_key["id"])},
        headers=bob["headers"],
    )
    assert foreign_key.status_code == 404
    assert (
        await client.post(
            URL,
            json={"name": "k", "limit_usd": 1, "api_key_id": str(bob_key["id"])},
            headers=bob["headers"],
        )
    ).status_code == 201

    everything = await client.get(URL, headers=admin["headers"])
    assert len(everything.json()) == 2
    by_user = await client.get(URL, params={"user_id": str(alice["id"])}, headers=admin["headers"])
    assert [b["id"] for b in by_user.json()] == [budget_id]


async def test_invalid_budgets_are_422_and_api_keys_are_refused(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    for body in (
        {"name": "x", "limit_usd": -1},
        {"name": "x", "limit_usd": "0.0000000001"},
        {"name": "x", "limit_usd": 1, "period": "hourly"},
        {"name": "x", "limit_usd": 1, "soft_thresholds": [0]},
        {"name": "", "limit_usd": 1},
    ):
        response = await client.post(URL, json=body, headers=user["headers"])
        assert response.status_code == 422, body
    both = await client.post(
        URL,
        json={
            "name": "x",
            "limit_usd": 1,
            "user_id": str(user["id"]),
            "api_key_id": str(key["id"]),
        },
        headers=user["headers"],
    )
    assert both.status_code == 400
    assert (await client.get(URL, headers=key["headers"])).status_code == 401


async def test_period_change_starts_a_new_period(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    import uuid

    from tests.llm.helpers import budget

    user = await actors.user()
    created = (
        await client.post(
            URL, json={"name": "x", "limit_usd": 10, "period": "monthly"}, headers=user["headers"]
        )
    ).json()
    budget_id = uuid.UUID(created["id"])
    from sqlalchemy import update

    from enclava.db import transaction
    from enclava.models import Budget

    async with transaction(app.state.enclava.session_factory) as session:
        await session.execute(
            update(Budget).where(Budget.id == budget_id).values(spent_nanousd=5_000_000_000)
        )
    patched = await client.patch(
        f"{URL}/{created['id']}", json={"period": "daily"}, headers=user["headers"]
    )
    assert patched.json()["period"] == "daily" and patched.json()["spent_usd"] == "0"
    assert (await budget(app, budget_id)).spent_nanousd == 0
