"""Recording when a key was last used, off the request path.

Each instance remembers when it last recorded each key (in process, bounded) and records a key
at most once per ``api_key_last_used_debounce_s``; with N instances a key is written at most N
times per interval. Requests only note the use (a dict lookup); one background task per
instance writes what is pending, all keys in one transaction, so writes cannot pile up however
many requests arrive: at most one task, and at most one pending write per key.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from datetime import datetime
from time import monotonic

from sqlalchemy import Table, bindparam, update
from sqlalchemy.exc import SQLAlchemyError

from enclava.db import SessionFactory, transaction
from enclava.kit.time import utcnow
from enclava.models import ApiKey

logger = logging.getLogger(__name__)

# Where the recorder lives in ``AppState.extras``.
STATE_KEY = "api_key_last_used"
# Keys remembered per instance; forgetting one early costs at most one extra write.
MAX_REMEMBERED = 10_000

_TABLE: Table = ApiKey.__table__  # type: ignore[assignment]
# Core, so that a list of parameters runs as one executemany.
_TOUCH = (
    update(_TABLE)
    .where(_TABLE.c.id == bindparam("key_id"))
    .values(last_used_at=bindparam("used_at"))
)


class LastUsedRecorder:
    def __init__(self, session_factory: SessionFactory, debounce_s: float) -> None:
        self._session_factory = session_factory
        self._debounce_s = debounce_s
        self._recorded: OrderedDict[uuid.UUID, float] = OrderedDict()
        self._pending: dict[uuid.UUID, datetime] = {}
        self._task: asyncio.Task[None] | None = None

    def note(self, key_id: uuid.UUID) -> None:
        """A request used ``key_id``: schedule a write unless one was made recently."""
        now = monotonic()
        last = self._recorded.get(key_id)
        if last is not None and now - last < self._debounce_s:
            return
        self._recorded[key_id] = now
        self._recorded.move_to_end(key_id)
        while len(self._recorded) > MAX_REMEMBERED:
            self._recorded.popitem(last=False)
        self._pending[key_id] = utcnow()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._write_pending())

    async def _write_pending(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, {}
            try:
                async with transaction(self._session_factory) as session:
                    connection = await session.connection()
                    await connection.execute(
                        _TOUCH, [{"key_id": k, "used_at": t} for k, t in batch.items()]
                    )
            except (SQLAlchemyError, OSError) as exc:
                # Informational only: a lost write is retried on the next use after the interval.
                logger.warning("could not record api key use", extra={"error": type(exc).__name__})
                for key_id in batch:
                    self._recorded.pop(key_id, None)

    async def flush(self) -> None:
        """Wait until every noted use is written (shutdown, tests)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        await self.flush()
