"""The last-used recorder: debounced per key in process, written by one background task."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from enclava.api_keys import service as key_service
from enclava.api_keys.last_used import STATE_KEY, LastUsedRecorder
from enclava.app import create_app
from enclava.auth import service as auth_service
from enclava.db import transaction
from enclava.models import ApiKey
from tests.conftest import Actors


async def test_many_uses_make_one_task_and_one_write_per_key(app: Any, actors: Actors) -> None:
    state = app.state.enclava
    recorder = LastUsedRecorder(state.session_factory, debounce_s=60)
    user = await actors.user()
    keys = [(await actors.api_key(user, name=f"k{n}"))["id"] for n in range(20)]

    tasks = set()
    for _ in range(5):
        for key_id in keys:
            recorder.note(key_id)
            tasks.add(recorder._task)
    # However many uses arrive, one writer at a time: a new one only once it has finished.
    assert len(tasks) == 1
    await recorder.flush()
    async with transaction(state.session_factory) as session:
        written = (
            await session.execute(select(ApiKey.id).where(ApiKey.last_used_at.is_not(None)))
        ).scalars()
        assert set(written) == set(keys)

    recorder.note(uuid.uuid4())  # an unknown id is harmless: its update matches no row
    await recorder.flush()


async def test_the_app_flushes_pending_uses_on_shutdown(settings: Any) -> None:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        state = application.state.enclava
        recorder = state.extras[STATE_KEY]
        async with transaction(state.session_factory) as session:
            owner = await auth_service.create_user(
                session, email="s@example.com", password="long enough"
            )
            row, _ = await key_service.create_key(
                session, state.settings.secret_key_value, owner, name="k"
            )
            key_id = row.id
        recorder.note(key_id)
    # The lifespan closed: the write happened before the engine was disposed.
    application = create_app(settings)
    async with (
        application.router.lifespan_context(application),
        transaction(application.state.enclava.session_factory) as session,
    ):
        row = await session.get(ApiKey, key_id)
        assert row is not None and row.last_used_at is not None
