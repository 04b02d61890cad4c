"""After exercising the application, no known plaintext secret is anywhere in the database:
every column of every table (including ones added later), and on SQLite the raw bytes of the
database file and its write-ahead log."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
from sqlalchemy import inspect, text

from enclava.config import Settings
from enclava.db import create_engine
from tests.conftest import PASSWORD, Actors
from tests.security.resources import FACTORIES, chat_model

SECRET_FIELD = re.compile(r"(secret|key|token|password)$", re.IGNORECASE)


def harvest(document: Any, found: set[str]) -> None:
    """Collect values of secret-looking fields in an API response (shown-once secrets)."""
    if isinstance(document, dict):
        for name, value in document.items():
            if isinstance(value, str) and len(value) >= 16 and SECRET_FIELD.search(name):
                found.add(value)
            else:
                harvest(value, found)
    elif isinstance(document, list):
        for item in document:
            harvest(item, found)


async def exercise(app: Any, client: httpx.AsyncClient) -> set[str]:
    """Do what users do with secrets; return every secret that passed through the app."""
    actors = Actors(app, client)
    secrets: set[str] = {PASSWORD}
    admin = await actors.user(role="admin")
    user = await actors.user()
    for person in (admin, user):
        harvest(person["tokens"], secrets)
        key = await actors.api_key(person, name="scan")
        secrets.add(key["key"])
    openapi = app.openapi()
    paths = openapi["paths"]

    # Runtime secrets (provider keys from the dashboard).
    for name in ("provider.privatemode.api_key", "plugin.crm.token"):
        value = f"sk-live-{uuid.uuid4().hex}{uuid.uuid4().hex}"
        response = await client.put(
            f"/api-internal/v1/settings/secrets/{name}",
            json={"secret": value},
            headers=admin["headers"],
        )
        assert response.status_code == 200
        secrets.add(value)

    # A new user created by the admin, with their own password.
    other_password = f"pw-{uuid.uuid4().hex}"
    created = await client.post(
        "/api-internal/v1/users",
        json={"email": f"scan-{uuid.uuid4().hex[:6]}@example.com", "password": other_password},
        headers=admin["headers"],
    )
    assert created.status_code == 201
    secrets.add(other_password)

    # Every creation route that exists (API keys, webhooks, ...): shown-once secrets.
    model = await chat_model(client, {"Authorization": f"Bearer {key['key']}"})
    for factory in FACTORIES:
        if factory.multipart or factory.method.lower() not in paths.get(factory.path, {}):
            continue
        body = {k: (model if v == "{model}" else v) for k, v in factory.body("scan").items()}
        response = await client.request(
            factory.method, factory.path, json=body, headers=user["headers"]
        )
        if response.status_code < 300:
            harvest(response.json(), secrets)
    if "post" in paths.get("/api-internal/v1/auth/refresh", {}):
        refreshed = await client.post(
            "/api-internal/v1/auth/refresh",
            json={"refresh_token": user["tokens"]["refresh_token"]},
        )
        if refreshed.status_code == 200:
            harvest(refreshed.json(), secrets)

    # Secrets where they do not belong: refused, and not recorded on the way.
    await client.get("/api/v1/models", params={"api_key": key["key"]})
    await client.post(
        "/api-internal/v1/users",
        json={"email": "x@example.com", "password": PASSWORD, "full_name": f"<script>{key['key']}"},
        headers=admin["headers"],
    )
    await client.get("/api-internal/v1/users", params={"q": f"' OR 1=1 -- {key['key']}"})
    await client.post(
        "/api-internal/v1/auth/login",
        json={"email": admin["email"], "password": "wrong" + PASSWORD},
    )
    return secrets


async def database_text(settings: Settings) -> list[tuple[str, str, str]]:
    """(table, column, value as text) for every non-null cell of every table."""
    cells: list[tuple[str, str, str]] = []
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: inspect(c).get_table_names())
            for table in tables:
                result = await connection.execute(text(f'SELECT * FROM "{table}"'))  # noqa: S608
                columns = list(result.keys())
                for row in result:
                    for column, value in zip(columns, row, strict=True):
                        if value is None:
                            continue
                        if isinstance(value, bytes | memoryview):
                            rendered = bytes(value).decode("latin-1")
                        elif isinstance(value, dict | list):
                            rendered = json.dumps(value)
                        else:
                            rendered = str(value)
                        cells.append((table, column, rendered))
    finally:
        await engine.dispose()
    return cells


async def test_no_known_secret_is_stored_in_plaintext(
    app: Any, client: httpx.AsyncClient, settings: Settings
) -> None:
    secrets = await exercise(app, client)
    assert len(secrets) >= 8
    cells = await database_text(settings)
    assert {table for table, _, _ in cells} >= {
        "users",
        "api_keys",
        "refresh_tokens",
        "app_secrets",
    }
    leaks = [
        (table, column) for table, column, value in cells for secret in secrets if secret in value
    ]
    assert leaks == []
    if settings.is_embedded_db:
        for suffix in ("", "-wal"):
            path = settings.data_dir / f"enclava.db{suffix}"
            if path.exists():
                raw = path.read_bytes()
                assert [s for s in secrets if s.encode() in raw] == [], path.name


async def test_the_scan_would_see_a_plaintext_secret(
    app: Any, client: httpx.AsyncClient, actors: Actors, settings: Settings
) -> None:
    """The scan reads every table: a secret stored in the clear in any column is found."""
    user = await actors.user()
    planted = f"plain-{uuid.uuid4().hex}"
    async with app.state.enclava.session_factory() as session:
        await session.execute(
            text("UPDATE users SET full_name = :v WHERE email = :e"),
            {"v": planted, "e": user["email"]},
        )
        await session.commit()
    cells = await database_text(settings)
    assert ("users", "full_name") in {(t, c) for t, c, v in cells if planted in v}
