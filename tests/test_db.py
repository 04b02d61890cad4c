"""Database connections: pooled connections that died while idle are replaced, not served."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from enclava import db
from tests.auth.probe import public_probe
from tests.conftest import BACKEND, Actors, StartApp, _pg_admin

PROBE = "/api/v1/_probe/chat"


async def test_a_connection_killed_while_idle_is_replaced(
    make_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, client = await make_app(public_probe)
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    headers = key["headers"]
    assert (await client.get(PROBE, headers=headers)).status_code == 200
    if BACKEND == "postgres":
        # What a database restart or a proxy's idle timeout does to the pooled connections.
        engine = app.state.enclava.engine
        async with engine.connect() as conn:
            database = (await conn.execute(text("SELECT current_database()"))).scalar_one()
        # The database name comes from the server itself, not from input.
        where = f"datname = '{database}' AND application_name = 'enclava'"
        terminate = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE " + where  # noqa: S608
        await _pg_admin(terminate)
    # Every connection now counts as having been idle long enough to be pinged.
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    for _ in range(3):
        response = await client.get(PROBE, headers=headers)
        assert response.status_code == 200, response.text
