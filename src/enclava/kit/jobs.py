"""Background jobs: a small queue interface and an in-process asyncio backend.

Jobs are registered by name and called with plain JSON-able arguments (ids, never ORM objects),
so a durable backend (arq on Redis) can carry them between processes later without changing
callers. A job's state that must survive a restart lives in the database, not in the queue: the
in-process queue forgets everything on shutdown and the domain requeues its unfinished rows at
start-up. Jobs must therefore be idempotent.

Jobs that depend on rows written by a request are enqueued *after* that transaction commits
(``enqueue_after_commit``); otherwise a worker could start on a row that does not exist yet, or
on one whose transaction is later rolled back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

logger = logging.getLogger(__name__)

JobArg = str | int | float | bool | None
JobFunc = Callable[..., Awaitable[None]]

_HOOKS_KEY = "enclava.transaction_hooks"
_LISTENING_KEY = "enclava.transaction_hooks.listening"


class JobQueue(Protocol):
    """What domains rely on; backends differ only in where queued jobs live."""

    def register(self, name: str, func: JobFunc) -> None:
        """Make ``func(*args)`` runnable as job ``name`` (call before ``start``)."""

    async def enqueue(self, name: str, *args: JobArg) -> None:
        """Queue a job. Enqueuing a job that is already queued or running is a no-op."""

    async def start(self) -> None: ...

    async def join(self) -> None:
        """Wait until no job is queued or running (tests, benchmarks, scripts)."""

    async def close(self) -> None:
        """Stop taking jobs and cancel running ones; their rows are requeued at next start."""


class InProcessJobQueue:
    """An asyncio queue drained by ``concurrency`` worker tasks in this process.

    A job that raises is logged and dropped: one failing job never stops the workers. Jobs that
    block must move their blocking work to threads themselves.
    """

    def __init__(self, concurrency: int = 2) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._concurrency = concurrency
        self._handlers: dict[str, JobFunc] = {}
        self._queue: asyncio.Queue[tuple[str, tuple[JobArg, ...]]] = asyncio.Queue()
        # Queued or running jobs, so that requeuing at start-up cannot run a job twice at once.
        self._active: set[tuple[str, tuple[JobArg, ...]]] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._closed = False

    def register(self, name: str, func: JobFunc) -> None:
        if name in self._handlers:
            raise ValueError(f"job {name!r} is already registered")
        self._handlers[name] = func

    async def enqueue(self, name: str, *args: JobArg) -> None:
        self.enqueue_nowait(name, *args)

    def enqueue_nowait(self, name: str, *args: JobArg) -> None:
        if self._closed:
            logger.warning("job dropped: queue closed", extra={"job": name})
            return
        if name not in self._handlers:
            raise KeyError(f"no job registered as {name!r}")
        for arg in args:
            if not isinstance(arg, str | int | float | bool | type(None)):
                raise TypeError(f"job arguments must be plain values, got {type(arg).__name__}")
        key = (name, args)
        if key in self._active:
            return
        self._active.add(key)
        self._queue.put_nowait(key)

    async def start(self) -> None:
        if self._workers:
            return
        self._workers = [
            asyncio.create_task(self._work(), name=f"enclava-job-worker-{i}")
            for i in range(self._concurrency)
        ]

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            name, args = key
            try:
                await self._handlers[name](*args)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("job failed", extra={"job": name})
            finally:
                self._active.discard(key)
                self._queue.task_done()

    async def join(self) -> None:
        await self._queue.join()

    async def close(self) -> None:
        self._closed = True
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    @property
    def pending(self) -> int:
        """Jobs queued or running."""
        return len(self._active)


def enqueue_after_commit(session: AsyncSession, queue: JobQueue, name: str, *args: JobArg) -> None:
    """Queue ``name(*args)`` once ``session``'s current transaction commits; drop it on rollback."""
    tasks = _background_tasks

    def submit() -> None:
        task = asyncio.get_running_loop().create_task(queue.enqueue(name, *args))
        tasks.add(task)
        task.add_done_callback(_enqueue_done(tasks, name))

    _hooks(session).on_commit.append(submit)


def on_commit(session: AsyncSession, callback: Callable[[], Any]) -> None:
    """Run ``callback()`` (synchronous and quick) after the current transaction commits."""
    _hooks(session).on_commit.append(callback)


def on_rollback(session: AsyncSession, callback: Callable[[], Any]) -> None:
    """Run ``callback()`` (synchronous and quick) if the current transaction rolls back."""
    _hooks(session).on_rollback.append(callback)


# Enqueue tasks are referenced until done so that the event loop cannot collect them early.
_background_tasks: set[asyncio.Task[None]] = set()


@dataclass
class _TransactionHooks:
    on_commit: list[Callable[[], Any]] = field(default_factory=list)
    on_rollback: list[Callable[[], Any]] = field(default_factory=list)


def _hooks(session: AsyncSession) -> _TransactionHooks:
    """The callbacks of the session's current transaction (listening on the session once)."""
    sync_session = session.sync_session
    hooks: _TransactionHooks | None = sync_session.info.get(_HOOKS_KEY)
    if hooks is None:
        hooks = _TransactionHooks()
        sync_session.info[_HOOKS_KEY] = hooks
    if not sync_session.info.get(_LISTENING_KEY):
        # Listeners stay for the session's life: removing one while SQLAlchemy dispatches the
        # event is not allowed, and each transaction's callbacks are popped when it ends anyway.
        sync_session.info[_LISTENING_KEY] = True
        event.listen(sync_session, "after_commit", _after_commit)
        event.listen(sync_session, "after_rollback", _after_rollback)
    return hooks


def _after_commit(ended: Session) -> None:
    _run(ended, committed=True)


def _after_rollback(ended: Session) -> None:
    _run(ended, committed=False)


def _run(ended: Session, *, committed: bool) -> None:
    if ended.in_nested_transaction():
        return  # a savepoint ended; the transaction the callbacks belong to goes on
    hooks: _TransactionHooks | None = ended.info.pop(_HOOKS_KEY, None)
    if hooks is None:
        return
    for callback in hooks.on_commit if committed else hooks.on_rollback:
        try:
            callback()
        except Exception:
            logger.exception("transaction hook failed")


def _enqueue_done(
    tasks: set[asyncio.Task[None]], name: str
) -> Callable[[asyncio.Task[None]], None]:
    def callback(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("could not enqueue job", extra={"job": name}, exc_info=task.exception())

    return callback


def create_job_queue(redis_url: str | None, concurrency: int = 2) -> InProcessJobQueue:
    """The job queue for this process.

    Only the in-process backend exists so far; with ``ENCLAVA_REDIS_URL`` set, jobs still run in
    the process that enqueued them (an arq backend would implement ``JobQueue`` and be picked
    here).
    """
    del redis_url
    return InProcessJobQueue(concurrency=concurrency)
