"""Database engines and the one-transaction-per-request session.

SQLite (embedded) runs in WAL mode with ``BEGIN IMMEDIATE`` transactions: writers queue on the
busy timeout instead of failing with "database is locked" when a read transaction upgrades.
PostgreSQL uses asyncpg with a bounded pool whose idle connections are pinged before use.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import Engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.util import await_only

from enclava.config import Settings
from enclava.kit.crypto import SecretBox
from enclava.models.encrypted import install_secret_box

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(settings: Settings) -> AsyncEngine:
    engine = _create_engine(settings)
    # Encrypted columns (models/encrypted.py) find their key on the engine.
    install_secret_box(
        engine,
        lambda: SecretBox(settings.encryption_key_value, *settings.previous_encryption_keys),
    )
    return engine


def _create_engine(settings: Settings) -> AsyncEngine:
    url = settings.resolved_database_url
    if url.startswith("sqlite"):
        settings.ensure_data_dir()
        engine = create_async_engine(
            url,
            echo=settings.db_echo,
            connect_args={"timeout": 30},
            pool_size=5,
            max_overflow=5,
        )
        _configure_sqlite(engine)
        return engine
    engine = create_async_engine(
        url,
        echo=settings.db_echo,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_s,
        pool_recycle=1800,
        connect_args={"server_settings": {"application_name": "enclava"}},
    )
    _ping_idle_connections(engine)
    return engine


# A pooled connection idle for longer than this is pinged before use (see below).
PING_AFTER_IDLE_S = 1.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """Pre-ping only connections that sat idle in the pool for ``PING_AFTER_IDLE_S``.

    SQLAlchemy's ``pool_pre_ping`` costs a round trip on every checkout, three per LLM call.
    What it protects against is a pooled connection that died while idle (database restart,
    failover, a proxy's idle timeout); those are exactly the connections that have been idle.
    Under load connections go back and forth within milliseconds and are not pinged; a
    connection that fails while in use fails the same way with or without a pre-ping. A dead
    connection is replaced transparently (the pool retries the checkout on a new one).
    """
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect

    @event.listens_for(pool, "checkin")
    def _on_checkin(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_S:
            return
        try:
            alive = dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("pooled connection failed its ping") from exc
        if not alive:
            raise DisconnectionError("pooled connection failed its ping")


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take over transaction control from the driver so BEGIN IMMEDIATE can be issued.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    # SQLite has one writer. Waiting for it in SQLite's busy handler means sleeping in steps of
    # up to 100 ms; queueing on an asyncio lock in this process hands the database over as soon
    # as the previous transaction ends. (Other processes, e.g. the CLI, still meet the busy
    # timeout.) The lock is held from BEGIN until the connection goes back to the pool.
    lock_holder: dict[str, Any] = {}

    def _write_lock() -> asyncio.Lock:
        lock = lock_holder.get("lock")
        if lock is None:
            lock = lock_holder["lock"] = asyncio.Lock()
        return lock

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(_READ_ONLY_OPTION):
            # Pure reads: no BEGIN at all, so each statement autocommits on its own WAL
            # snapshot. Readers never wait for the writer and never hold up the next one.
            return
        record = connection.connection._connection_record
        if record is not None and not record.info.get("holds_write_lock"):
            try:
                await_only(asyncio.wait_for(_write_lock().acquire(), 30))
            except TimeoutError:
                # What SQLite's own busy timeout would have raised.
                raise sqlite3.OperationalError("database is locked") from None
            record.info["holds_write_lock"] = True
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    def _release(_dbapi_connection: Any, record: Any, *args: Any) -> None:
        if record is not None and record.info.pop("holds_write_lock", False):
            _write_lock().release()

    event.listen(engine.sync_engine.pool, "checkin", _release)
    event.listen(engine.sync_engine.pool, "invalidate", _release)


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


_READ_ONLY_OPTION = "enclava_read_only"


def read_only_engine(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for pure reads: same pool, but on SQLite no ``BEGIN IMMEDIATE`` and no turn
    on the write lock (each statement reads its own committed snapshot). On PostgreSQL it is
    the plain engine. Never write through it: on SQLite the writes would not be serialised."""
    cached = _read_only_engines.get(engine.sync_engine)
    if cached is None:
        cached = engine.execution_options(**{_READ_ONLY_OPTION: True})
        _read_only_engines[engine.sync_engine] = cached
    return cached


_read_only_engines: weakref.WeakKeyDictionary[Engine, AsyncEngine] = weakref.WeakKeyDictionary()


@asynccontextmanager
async def transaction(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed on success and rolled back on error (jobs, scripts)."""
    async with factory() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: SessionFactory = request.app.state.enclava.session_factory
    async with transaction(factory) as session:
        yield session


# Committed when the endpoint returns, before the response is sent, so a client never reads a
# response whose writes could still fail to commit.
DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
