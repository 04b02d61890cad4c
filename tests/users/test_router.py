"""User administration and a user's own password."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from enclava.db import transaction
from enclava.models import ApiKey, AuditLog
from tests.auth.probe import public_probe
from tests.conftest import PASSWORD, Actors, StartApp

USERS = "/api-internal/v1/users"
LOGIN = "/api-internal/v1/auth/login"
ME = "/api-internal/v1/auth/me"


async def _actions(app: Any) -> list[tuple[str, dict[str, Any]]]:
    async with transaction(app.state.enclava.session_factory) as session:
        rows = (await session.execute(select(AuditLog).order_by(AuditLog.created_at))).scalars()
        return [(r.action, r.details) for r in rows if r.action.startswith("user.")]


async def test_admin_manages_users(app: Any, client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    created = await client.post(
        USERS,
        headers=admin["headers"],
        json={"email": "New@Example.com", "password": "a long password", "full_name": "New"},
    )
    assert created.status_code == 201
    new = created.json()
    assert new["email"] == "new@example.com" and new["role"] == "user" and new["is_active"]

    listed = (await client.get(USERS, headers=admin["headers"])).json()
    assert {u["email"] for u in listed} == {admin["email"], "new@example.com"}
    page = (await client.get(USERS, headers=admin["headers"], params={"limit": 1})).json()
    assert len(page) == 1

    patched = await client.patch(
        f"{USERS}/{new['id']}",
        headers=admin["headers"],
        json={"full_name": "Renamed", "role": "admin"},
    )
    assert patched.status_code == 200
    assert patched.json()["full_name"] == "Renamed" and patched.json()["role"] == "admin"
    fetched = await client.get(f"{USERS}/{new['id']}", headers=admin["headers"])
    assert fetched.json()["role"] == "admin"

    deleted = await client.delete(f"{USERS}/{new['id']}", headers=admin["headers"])
    assert deleted.status_code == 204
    gone = await client.get(f"{USERS}/{new['id']}", headers=admin["headers"])
    assert gone.status_code == 404

    actions = await _actions(app)
    assert [a for a, _ in actions] == ["user.create", "user.update", "user.delete"]
    assert actions[1][1]["changed"] == ["full_name", "role"] and actions[1][1]["role"] == "admin"
    assert all("password" not in str(details) for _, details in actions)


async def test_duplicate_email_and_bad_input(client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    duplicate = await client.post(
        USERS, headers=admin["headers"], json={"email": admin["email"], "password": "long enough"}
    )
    assert duplicate.status_code == 409 and duplicate.json()["code"] == "email_taken"
    for body in (
        {"email": "not-an-email", "password": "long enough"},
        {"email": "a@example.com", "password": "short"},
        {"email": "a@example.com", "password": "long enough", "role": "root"},
    ):
        response = await client.post(USERS, headers=admin["headers"], json=body)
        assert response.status_code == 422, body
    bad_id = await client.get(f"{USERS}/not-a-uuid", headers=admin["headers"])
    assert bad_id.status_code == 422
    bad_patch = await client.patch(
        f"{USERS}/{admin['id']}", headers=admin["headers"], json={"password": "short"}
    )
    assert bad_patch.status_code == 422


async def test_users_see_only_themselves(client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    user = await actors.user()
    me = await client.get(f"{USERS}/{user['id']}", headers=user["headers"])
    assert me.status_code == 200 and me.json()["email"] == user["email"]
    other = await client.get(f"{USERS}/{admin['id']}", headers=user["headers"])
    assert other.status_code == 404

    for method, path, body in (
        ("GET", USERS, None),
        ("POST", USERS, {"email": "x@example.com", "password": "long enough"}),
        ("PATCH", f"{USERS}/{user['id']}", {"role": "admin"}),
        ("DELETE", f"{USERS}/{admin['id']}", None),
    ):
        response = await client.request(method, path, headers=user["headers"], json=body)
        assert response.status_code == 403, (method, path)
        assert response.json()["code"] == "admin_required"
    assert (await client.get(ME, headers=user["headers"])).json()["role"] == "user"


@pytest.mark.parametrize(
    "change",
    [{"role": "user"}, {"is_active": False}, "delete"],
    ids=["demote", "disable", "delete"],
)
async def test_the_last_admin_stays(change: Any, client: httpx.AsyncClient, actors: Actors) -> None:
    admin = await actors.user(role="admin")
    path = f"{USERS}/{admin['id']}"
    if change == "delete":
        response = await client.delete(path, headers=admin["headers"])
    else:
        response = await client.patch(path, headers=admin["headers"], json=change)
    assert response.status_code == 409 and response.json()["code"] == "last_admin"

    # With a second admin it is allowed.
    await actors.user(role="admin")
    if change == "delete":
        response = await client.delete(path, headers=admin["headers"])
        assert response.status_code == 204
    else:
        response = await client.patch(path, headers=admin["headers"], json=change)
        assert response.status_code == 200


async def test_password_reset_by_admin_ends_sessions(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    user = await actors.user()
    response = await client.patch(
        f"{USERS}/{user['id']}", headers=admin["headers"], json={"password": "a brand new one"}
    )
    assert response.status_code == 200
    assert (await client.get(ME, headers=user["headers"])).status_code == 401
    old = await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    assert old.status_code == 401
    new = await client.post(LOGIN, json={"email": user["email"], "password": "a brand new one"})
    assert new.status_code == 200


async def test_user_changes_own_password(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    elsewhere = (
        await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    ).json()

    wrong = await client.post(
        f"{USERS}/me/password",
        headers=user["headers"],
        json={"current_password": "not it at all", "new_password": "fresh password"},
    )
    assert wrong.status_code == 400 and wrong.json()["code"] == "invalid_current_password"

    changed = await client.post(
        f"{USERS}/me/password",
        headers=user["headers"],
        json={"current_password": PASSWORD, "new_password": "fresh password"},
    )
    assert changed.status_code == 204
    # This session goes on; the other sign-in is ended.
    assert (await client.get(ME, headers=user["headers"])).status_code == 200
    other = await client.get(ME, headers={"Authorization": f"Bearer {elsewhere['access_token']}"})
    assert other.status_code == 401
    assert (
        await client.post(LOGIN, json={"email": user["email"], "password": PASSWORD})
    ).status_code == 401
    assert (
        await client.post(LOGIN, json={"email": user["email"], "password": "fresh password"})
    ).status_code == 200
    assert ("user.password_change", {}) in await _actions(app)


async def test_deleting_a_user_removes_their_keys(make_app: StartApp) -> None:
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    admin = await actors.user(role="admin")
    user = await actors.user()
    key = await actors.api_key(user)
    assert (await client.get("/api/v1/_probe/key", headers=key["headers"])).status_code == 200
    assert (
        await client.delete(f"{USERS}/{user['id']}", headers=admin["headers"])
    ).status_code == 204
    assert (await client.get("/api/v1/_probe/key", headers=key["headers"])).status_code == 401
    async with transaction(app.state.enclava.session_factory) as session:
        assert (await session.execute(select(ApiKey))).first() is None
