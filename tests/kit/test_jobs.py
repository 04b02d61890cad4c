from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from enclava.kit.jobs import (
    InProcessJobQueue,
    enqueue_after_commit,
    on_commit,
    on_rollback,
)


@pytest.fixture
async def queue() -> AsyncIterator[InProcessJobQueue]:
    jobs = InProcessJobQueue(concurrency=2)
    yield jobs
    await jobs.close()


@pytest.fixture
async def session_factory() -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine("sqlite+aiosqlite://")
    yield async_sessionmaker(engine, expire_on_commit=False)
    await engine.dispose()


async def test_jobs_run_with_bounded_concurrency(queue: InProcessJobQueue) -> None:
    running = 0
    most = 0
    release = asyncio.Event()
    done: list[int] = []

    async def work(number: int) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await release.wait()
        running -= 1
        done.append(number)

    queue.register("work", work)
    await queue.start()
    for number in range(6):
        await queue.enqueue("work", number)
    await asyncio.sleep(0.05)
    assert running == 2
    release.set()
    await asyncio.wait_for(queue.join(), 5)
    assert sorted(done) == list(range(6))
    assert most == 2
    assert queue.pending == 0


async def test_enqueuing_a_job_already_queued_or_running_is_a_no_op(
    queue: InProcessJobQueue,
) -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def work(name: str) -> None:
        calls.append(name)
        await release.wait()

    queue.register("work", work)
    await queue.enqueue("work", "a")
    await queue.enqueue("work", "a")  # queued twice before start
    await queue.start()
    await asyncio.sleep(0.02)
    await queue.enqueue("work", "a")  # while running
    release.set()
    await queue.join()
    assert calls == ["a"]
    await queue.enqueue("work", "a")  # finished: may run again
    await queue.join()
    assert calls == ["a", "a"]


async def test_a_failing_job_is_logged_and_the_workers_carry_on(
    queue: InProcessJobQueue, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[int] = []

    async def flaky(number: int) -> None:
        if number == 1:
            raise RuntimeError("boom")
        ran.append(number)

    queue.register("flaky", flaky)
    await queue.start()
    with caplog.at_level(logging.ERROR, logger="enclava.kit.jobs"):
        for number in range(4):
            await queue.enqueue("flaky", number)
        await queue.join()
    assert sorted(ran) == [0, 2, 3]
    assert any(r.message == "job failed" for r in caplog.records)


async def test_only_plain_arguments_and_registered_names(queue: InProcessJobQueue) -> None:
    async def work(*_: object) -> None:
        return None

    queue.register("work", work)
    with pytest.raises(TypeError):
        await queue.enqueue("work", object())  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        await queue.enqueue("missing", 1)
    with pytest.raises(ValueError):
        queue.register("work", work)


async def test_close_cancels_running_jobs_and_refuses_new_ones(queue: InProcessJobQueue) -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    queue.register("forever", forever)
    await queue.start()
    await queue.enqueue("forever")
    await asyncio.wait_for(started.wait(), 5)
    await queue.close()
    assert cancelled.is_set()
    await queue.enqueue("forever")  # dropped with a warning, not an error
    assert queue.pending == 0


async def test_jobs_enqueued_in_a_transaction_run_only_after_commit(
    queue: InProcessJobQueue, session_factory: async_sessionmaker[AsyncSession]
) -> None:
    ran: list[str] = []

    async def work(name: str) -> None:
        ran.append(name)

    queue.register("work", work)
    await queue.start()

    async with session_factory() as session:
        await session.execute(text("SELECT 1"))
        enqueue_after_commit(session, queue, "work", "committed")
        await asyncio.sleep(0.02)
        assert ran == [] and queue.pending == 0
        await session.commit()
    await asyncio.sleep(0.02)
    await queue.join()
    assert ran == ["committed"]

    async with session_factory() as session:
        await session.execute(text("SELECT 1"))
        enqueue_after_commit(session, queue, "work", "rolled-back")
        await session.rollback()
        # A later transaction on the same session starts with no pending jobs.
        await session.execute(text("SELECT 1"))
        await session.commit()
    await asyncio.sleep(0.02)
    await queue.join()
    assert ran == ["committed"]


async def test_commit_and_rollback_callbacks_follow_the_outer_transaction(
    session_factory: async_sessionmaker[AsyncSession],
) -> None:
    events: list[str] = []
    async with session_factory() as session:
        await session.execute(text("SELECT 1"))
        on_commit(session, lambda: events.append("commit-1"))
        on_rollback(session, lambda: events.append("rollback-1"))
        # Savepoints that commit or roll back do not end the outer transaction.
        async with session.begin_nested():
            await session.execute(text("SELECT 1"))
        try:
            async with session.begin_nested():
                await session.execute(text("SELECT 1"))
                raise ValueError
        except ValueError:
            pass
        assert events == []
        await session.commit()
        assert events == ["commit-1"]

        await session.execute(text("SELECT 1"))
        on_commit(session, lambda: events.append("commit-2"))
        on_rollback(session, lambda: events.append("rollback-2"))
        await session.rollback()
    assert events == ["commit-1", "rollback-2"]
