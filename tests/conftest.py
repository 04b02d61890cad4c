"""Shared fixtures. The suite runs on two backends, chosen by ``ENCLAVA_TEST_BACKEND``:

- ``embedded`` (default): SQLite in a per-test data dir (copied from a migrated template),
  in-process cache, Qdrant local mode.
- ``postgres``: PostgreSQL at ``ENCLAVA_TEST_DATABASE_URL`` (a database migrated once per run,
  every table truncated before each test) and Redis at ``ENCLAVA_TEST_REDIS_URL`` (flushed).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from enclava.app import create_app
from enclava.config import Settings
from enclava.migrations import runner
from enclava.models import Base
from enclava.testing.mock_upstream import Simulator, SimulatorConfig
from enclava.testing.mock_upstream import create_app as create_mock_upstream
from enclava.testing.server import serve_in_thread

BACKEND = os.environ.get("ENCLAVA_TEST_BACKEND", "embedded")
PG_ADMIN_URL = os.environ.get(
    "ENCLAVA_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("ENCLAVA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
TEST_SECRET = "test-secret-key-that-is-long-enough-0123456789"
TEST_ENCRYPTION_KEY = "test-encryption-key-that-is-long-enough-012345"
PASSWORD = "correct horse battery"

assert BACKEND in ("embedded", "postgres"), f"unknown ENCLAVA_TEST_BACKEND {BACKEND!r}"


def _pg_url(database: str) -> str:
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{database}"


async def _pg_admin(sql: str) -> None:
    engine = create_async_engine(
        _pg_url("postgres").replace("postgresql://", "postgresql+asyncpg://"),
        isolation_level="AUTOCOMMIT",
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing() -> Iterator[Any]:
    """Argon2id at its cheapest while testing: at production parameters a hash costs ~0.1 s of
    CPU and most tests sign someone in. Yields the production hasher, which
    tests/auth/test_passwords.py checks on its own."""
    from argon2 import PasswordHasher

    from enclava.auth import passwords

    production = (passwords._hasher, passwords._DUMMY_HASH)
    passwords._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    passwords._DUMMY_HASH = passwords._hasher.hash("enclava-timing-equaliser")
    yield production[0]
    passwords._hasher, passwords._DUMMY_HASH = production


@pytest.fixture(scope="session")
def database_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Migrate an empty database once per run with the real Alembic migrations."""
    if BACKEND == "postgres":
        name = f"enclava_test_{os.getpid()}"
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
        url = _pg_url(name)
        runner.upgrade(_make_settings(tmp_path_factory.mktemp("pg-migrate"), database_url=url))
        yield {"database_url": url}
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        template_dir = tmp_path_factory.mktemp("sqlite-template")
        runner.upgrade(_make_settings(template_dir))
        yield {"sqlite_template": template_dir / "enclava.db"}


def _make_settings(data_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "test",
        "data_dir": data_dir,
        "secret_key": TEST_SECRET,
        "encryption_key": TEST_ENCRYPTION_KEY,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


async def _reset_postgres(url: str) -> None:
    engine = create_async_engine(url.replace("postgresql://", "postgresql+asyncpg://"))
    try:
        async with engine.begin() as conn:
            tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await engine.dispose()


async def _reset_redis() -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


def cli_env(settings: Settings) -> dict[str, str]:
    """The environment that points the ``enclava`` CLI at a test's database and secrets."""
    env = {
        "ENCLAVA_DATA_DIR": str(settings.data_dir),
        "ENCLAVA_SECRET_KEY": settings.secret_key_value,
        "ENCLAVA_ENCRYPTION_KEY": settings.encryption_key_value,
    }
    if settings.database_url:
        env["ENCLAVA_DATABASE_URL"] = settings.database_url
    return env


def another_instance(settings: Settings, **overrides: Any) -> Settings:
    """Settings for one more instance of the same deployment: it shares the database (and
    Redis) but has its own data dir, since Qdrant's local store belongs to one process."""
    own_dir = settings.data_dir / f"instance-{uuid.uuid4().hex[:8]}"
    own_dir.mkdir()
    values = {
        **settings.model_dump(),
        "data_dir": own_dir,
        "database_url": settings.resolved_database_url,
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
def settings(database_template: dict[str, Any], data_dir: Path) -> Iterator[Settings]:
    """Settings for one test, on a clean database (and a clean Redis on the postgres backend)."""
    if BACKEND == "postgres":
        asyncio.run(_reset_postgres(database_template["database_url"]))
        asyncio.run(_reset_redis())
        yield _make_settings(
            data_dir, database_url=database_template["database_url"], redis_url=REDIS_URL
        )
    else:
        shutil.copy(database_template["sqlite_template"], data_dir / "enclava.db")
        yield _make_settings(data_dir)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[Any]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


class Actors:
    """Creates users, logs them in and mints API keys through the real services."""

    def __init__(self, app: Any, client: httpx.AsyncClient) -> None:
        self.app = app
        self.client = client

    async def user(self, email: str | None = None, role: str = "user") -> dict[str, Any]:
        from enclava.auth import service
        from enclava.db import transaction

        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        async with transaction(self.app.state.enclava.session_factory) as session:
            user = await service.create_user(session, email=email, password=PASSWORD, role=role)
            user_id = user.id
        response = await self.client.post(
            "/api-internal/v1/auth/login", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 200, response.text
        tokens = response.json()
        return {
            "id": user_id,
            "email": email,
            "tokens": tokens,
            "headers": {"Authorization": f"Bearer {tokens['access_token']}"},
        }

    async def api_key(self, owner: dict[str, Any], **fields: Any) -> dict[str, Any]:
        from enclava.api_keys import service
        from enclava.auth import repository
        from enclava.db import transaction

        state = self.app.state.enclava
        async with transaction(state.session_factory) as session:
            user = await repository.get_user(session, owner["id"])
            assert user is not None
            row, plaintext = await service.create_key(
                session,
                state.settings.secret_key_value,
                user,
                name=fields.pop("name", "test"),
                **fields,
            )
            key_id = row.id
        return {"id": key_id, "key": plaintext, "headers": {"Authorization": f"Bearer {plaintext}"}}


@pytest.fixture
def actors(app: Any, client: httpx.AsyncClient) -> Actors:
    return Actors(app, client)


StartApp = Callable[..., Awaitable[tuple[Any, httpx.AsyncClient]]]


@pytest.fixture
async def make_app(settings: Settings) -> AsyncIterator[StartApp]:
    """Start more app instances on the same database (and Redis): ``await make_app(*routers,
    **setting_overrides)`` returns ``(app, client)``. Two calls are two instances of one
    deployment; extra routers are mounted as given (e.g. a probe under ``/api/v1``)."""
    async with AsyncExitStack() as stack:

        async def start(*routers: Any, **overrides: Any) -> tuple[Any, httpx.AsyncClient]:
            application = create_app(another_instance(settings, **overrides))
            for router in routers:
                application.include_router(router)
            await stack.enter_async_context(application.router.lifespan_context(application))
            http = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=application), base_url="http://testserver"
                )
            )
            return application, http

        yield start


@pytest.fixture(scope="session")
def mock_upstream_server() -> Iterator[tuple[str, Simulator]]:
    """The OpenAI-compatible simulator on loopback, one per test run (reset per test by
    ``mock_upstream``); providers files in tests point at its URL."""
    simulator = Simulator(SimulatorConfig())
    with serve_in_thread(create_mock_upstream(simulator)) as url:
        yield url, simulator


@pytest.fixture
def mock_upstream(mock_upstream_server: tuple[str, Simulator]) -> Simulator:
    _, simulator = mock_upstream_server
    simulator.reset()
    simulator.config = SimulatorConfig()
    return simulator
