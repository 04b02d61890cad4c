"""Secrets at rest: encrypted columns, the runtime-secrets API, and key rotation."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import Column, MetaData, String, Table, Text, select, type_coerce
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from enclava.cli import app as cli
from enclava.config import Settings
from enclava.db import create_engine
from enclava.kit.crypto import SecretBox
from enclava.models import AppSecret, AuditLog, Base
from enclava.models.encrypted import (
    EncryptedJSON,
    EncryptedString,
    MissingEncryptionKeyError,
    encrypted_columns,
)
from enclava.security.rotation import rotate_encryption
from tests.conftest import Actors

OLD_KEY = "old-encryption-key-that-is-long-enough-000000"
NEW_KEY = "new-encryption-key-that-is-long-enough-111111"


def rekeyed(settings: Settings, key: str, previous: str | None = None) -> Settings:
    values = {**settings.model_dump(), "encryption_key": key, "encryption_key_previous": previous}
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def raw_values(settings: Settings, name: str) -> str | None:
    engine = create_engine(settings)
    try:
        async with engine.connect() as connection:
            column = type_coerce(AppSecret.__table__.c.value, Text)
            result = await connection.execute(
                select(column).where(AppSecret.__table__.c.name == name)
            )
            return result.scalar_one_or_none()
    finally:
        await engine.dispose()


async def test_admin_sets_lists_and_deletes_secrets_without_ever_seeing_values(
    app: Any, client: httpx.AsyncClient, actors: Actors, settings: Settings
) -> None:
    admin = await actors.user(role="admin")
    user = await actors.user()
    value = f"pm-{uuid.uuid4().hex}"
    url = "/api-internal/v1/settings/secrets/provider.privatemode.api_key"
    created = await client.put(url, json={"secret": value}, headers=admin["headers"])
    assert created.status_code == 200, created.text
    assert value not in created.text and set(created.json()) == {"name", "created_at", "updated_at"}

    listed = await client.get("/api-internal/v1/settings/secrets", headers=admin["headers"])
    assert [s["name"] for s in listed.json()] == ["provider.privatemode.api_key"]
    assert value not in listed.text

    token = await raw_values(settings, "provider.privatemode.api_key")
    assert token is not None and token.startswith("gAAAAA") and value not in token
    assert SecretBox(settings.encryption_key_value).decrypt(token) == value

    from enclava.security.service import get_secret_value

    async with app.state.enclava.session_factory() as session:
        assert await get_secret_value(session, "provider.privatemode.api_key") == value

    for method, body in (("PUT", {"secret": "x"}), ("DELETE", None)):
        refused = await client.request(method, url, json=body, headers=user["headers"])
        assert refused.status_code == 403
    bad_name = await client.put(
        "/api-internal/v1/settings/secrets/Bad Name!",
        json={"secret": "x"},
        headers=admin["headers"],
    )
    assert bad_name.status_code == 422

    deleted = await client.delete(url, headers=admin["headers"])
    assert deleted.status_code == 204
    assert (await client.delete(url, headers=admin["headers"])).status_code == 404
    async with app.state.enclava.session_factory() as session:
        rows = (
            await session.execute(select(AuditLog).where(AuditLog.action.like("settings.%")))
        ).scalars()
        actions = [(row.action, row.resource_id) for row in rows]
        assert ("settings.secret_created", "provider.privatemode.api_key") in actions
        assert ("settings.secret_deleted", "provider.privatemode.api_key") in actions
        assert value not in repr([row.details for row in rows])


async def test_an_engine_without_a_key_refuses_encrypted_columns(settings: Settings) -> None:
    engine = create_async_engine(settings.resolved_database_url)
    try:
        async with engine.begin() as connection:
            with pytest.raises(StatementError) as raised:
                await connection.execute(
                    AppSecret.__table__.insert().values(name="x", value="plaintext")
                )
    finally:
        await engine.dispose()
    assert isinstance(raised.value.orig, MissingEncryptionKeyError)


def test_encrypted_columns_are_discovered_by_type() -> None:
    found = {f"{table.name}.{column.name}" for table, column in encrypted_columns(Base.metadata)}
    assert "app_secrets.value" in found
    metadata = MetaData()
    Table(
        "plugin_configs",
        metadata,
        Column("id", String, primary_key=True),
        Column("config", EncryptedJSON()),
    )
    assert [(t.name, c.name) for t, c in encrypted_columns(metadata)] == [
        ("plugin_configs", "config")
    ]


@pytest.fixture
def scratch_table(settings: Settings) -> Iterator[Table]:
    """A table defined outside the application's metadata: rotation must find it by type."""
    metadata = MetaData()
    table = Table(
        f"zz_scratch_{uuid.uuid4().hex[:8]}",
        metadata,
        Column("id", String(36), primary_key=True),
        Column("secret", EncryptedString()),
        Column("config", EncryptedJSON()),
    )

    async def ddl(create: bool) -> None:
        engine = create_engine(settings)
        try:
            async with engine.begin() as connection:
                await connection.run_sync(metadata.create_all if create else metadata.drop_all)
        finally:
            await engine.dispose()

    asyncio.run(ddl(True))
    yield table
    asyncio.run(ddl(False))


def test_rotation_re_encrypts_every_column_and_is_idempotent(
    settings: Settings, scratch_table: Table
) -> None:
    old = rekeyed(settings, OLD_KEY)
    new = rekeyed(settings, NEW_KEY, OLD_KEY)
    new_only = rekeyed(settings, NEW_KEY)
    rows = {str(i): (f"sk-{i}-{uuid.uuid4().hex}", {"token": f"t{i}", "n": i}) for i in range(7)}

    async def scenario() -> None:
        engine = create_engine(old)
        async with engine.begin() as connection:
            await connection.execute(
                scratch_table.insert(),
                [{"id": k, "secret": s, "config": c} for k, (s, c) in rows.items()],
            )
        await engine.dispose()

        metadata = scratch_table.metadata
        box = SecretBox(NEW_KEY, OLD_KEY)
        engine = create_engine(new)
        dry = await rotate_encryption(engine, box, metadata, dry_run=True)
        assert dry.total_rotated == 14
        report = await rotate_encryption(engine, box, metadata)
        assert report.rotated == {
            f"{scratch_table.name}.secret": 7,
            f"{scratch_table.name}.config": 7,
        }
        again = await rotate_encryption(engine, box, metadata)
        assert again.total_rotated == 0 and sum(again.already_current.values()) == 14
        await engine.dispose()

        # The old key is no longer needed; the values are intact.
        engine = create_engine(new_only)
        async with engine.connect() as connection:
            stored = {
                r.id: (r.secret, r.config) for r in await connection.execute(select(scratch_table))
            }
        await engine.dispose()
        assert stored == rows

    asyncio.run(scenario())


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {
        "ENCLAVA_DATA_DIR": str(settings.data_dir),
        "ENCLAVA_SECRET_KEY": settings.secret_key_value,
    }
    if settings.database_url:
        env["ENCLAVA_DATABASE_URL"] = settings.database_url
    return {**env, **extra}


def test_cli_rotates_app_secrets_and_refuses_undecryptable_values(settings: Settings) -> None:
    old = rekeyed(settings, OLD_KEY)

    async def seed() -> None:
        engine = create_engine(old)
        async with engine.begin() as connection:
            await connection.execute(
                AppSecret.__table__.insert(),
                [{"name": f"provider.p{i}.api_key", "value": f"secret-{i}"} for i in range(3)],
            )
        await engine.dispose()

    asyncio.run(seed())
    runner = CliRunner()
    before = asyncio.run(raw_values(settings, "provider.p0.api_key"))
    dry = runner.invoke(
        cli,
        ["keys", "rotate-encryption", "--dry-run"],
        env=cli_env(
            settings,
            ENCLAVA_ENCRYPTION_KEY=NEW_KEY,
            ENCLAVA_ENCRYPTION_KEY_PREVIOUS=f"unrelated-key,{OLD_KEY}",
        ),
    )
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["rotated"]["app_secrets.value"] == 3
    assert asyncio.run(raw_values(settings, "provider.p0.api_key")) == before

    done = runner.invoke(
        cli,
        ["keys", "rotate-encryption"],
        env=cli_env(
            settings, ENCLAVA_ENCRYPTION_KEY=NEW_KEY, ENCLAVA_ENCRYPTION_KEY_PREVIOUS=OLD_KEY
        ),
    )
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["total_rotated"] >= 3
    token = asyncio.run(raw_values(settings, "provider.p0.api_key"))
    assert token is not None and SecretBox(NEW_KEY).decrypt(token) == "secret-0"

    # Without the key that encrypted them, the values cannot be rotated: a clear error, exit 1.
    missing = runner.invoke(
        cli,
        ["keys", "rotate-encryption"],
        env=cli_env(settings, ENCLAVA_ENCRYPTION_KEY="yet-another-key-0123456789-0123456789"),
    )
    assert missing.exit_code == 1
    assert "app_secrets.value" in missing.output and "cannot be decrypted" in missing.output
