"""/api-internal/v1/budgets: USD in the API, visibility per user, admin-set budgets protected."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import Actors, StartApp

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


async def _user_subject(app: Any, user_id: Any) -> Any:
    from enclava.auth import repository
    from enclava.auth.subject import AuthSubject
    from enclava.db import transaction

    async with transaction(app.state.enclava.session_factory) as session:
        user = await repository.get_user(session, user_id)
        assert user is not None
        return AuthSubject(kind="user", user=user)


async def test_budget_changes_apply_to_the_next_call_on_every_instance(
    app: Any, client: httpx.AsyncClient, actors: Actors, make_app: StartApp
) -> None:
    """Instance B has the owner's budgets loaded; changes made through instance A's API apply
    to B's very next reservation (B shares A's ledger: Redis, or this process's memory)."""
    from enclava.budgets import service
    from enclava.errors import QuotaExceededError

    other, _ = await make_app()
    user = await actors.user()
    subject = await _user_subject(app, user["id"])
    b = other.state.enclava
    created = await client.post(
        URL, json={"name": "cap", "limit_usd": "0.000001"}, headers=user["headers"]
    )
    assert created.status_code == 201
    budget_id = created.json()["id"]
    await service.reserve(b, subject, 800)
    with pytest.raises(QuotaExceededError):
        await service.reserve(b, subject, 300)

    raised = await client.patch(
        f"{URL}/{budget_id}", json={"limit_usd": "0.0000011"}, headers=user["headers"]
    )
    assert raised.status_code == 200
    # The 800 in flight still count against the new limit of 1,100.
    assert raised.json()["reserved_usd"] == "0.0000008"
    assert raised.json()["remaining_usd"] == "0.0000003"
    await service.reserve(b, subject, 300)
    with pytest.raises(QuotaExceededError):
        await service.reserve(b, subject, 1)

    second = await client.post(
        URL,
        json={"name": "daily", "limit_usd": "0.000002", "period": "daily"},
        headers=user["headers"],
    )
    assert second.status_code == 201
    paused = await client.patch(
        f"{URL}/{budget_id}", json={"is_active": False}, headers=user["headers"]
    )
    assert paused.status_code == 200
    # Only the new daily budget applies now.
    reservation = await service.reserve(b, subject, 2_000)
    assert [str(i) for i in reservation.budget_ids] == [second.json()["id"]]
    deleted = await client.delete(f"{URL}/{second.json()['id']}", headers=user["headers"])
    assert deleted.status_code == 204
    assert (await service.reserve(b, subject, 10**12)).charges == ()


async def test_budgets_show_what_is_reserved_and_what_is_spent(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    from enclava.budgets import service

    user = await actors.user()
    subject = await _user_subject(app, user["id"])
    created = await client.post(
        URL, json={"name": "cap", "limit_usd": "0.00001"}, headers=user["headers"]
    )
    budget_id = created.json()["id"]
    assert created.json()["reserved_usd"] == "0"
    state = app.state.enclava
    first = await service.reserve(state, subject, 3_000)
    await service.reserve(state, subject, 2_000)
    usage = service.UsageData(endpoint="chat", model="m", provider="p", status="success")
    await service.settle(state, subject, first, 1_000, usage)
    shown = (await client.get(f"{URL}/{budget_id}", headers=user["headers"])).json()
    assert (shown["spent_usd"], shown["reserved_usd"], shown["remaining_usd"]) == (
        "0.000001",
        "0.000002",
        "0.000007",
    )
