from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import func, select

from enclava.auth import repository as users
from enclava.auth.subject import AuthSubject
from enclava.budgets import service
from enclava.db import transaction
from enclava.errors import QuotaExceededError
from enclava.kit.time import utcnow
from enclava.models import Budget, UsageRecord
from tests.conftest import Actors


async def _subject(app: Any, owner: dict[str, Any]) -> AuthSubject:
    async with transaction(app.state.enclava.session_factory) as session:
        user = await users.get_user(session, owner["id"])
        assert user is not None
        return AuthSubject(kind="user", user=user)


async def _budget(app: Any, user_id: Any, limit: int, **fields: Any) -> Any:
    async with transaction(app.state.enclava.session_factory) as session:
        budget = Budget(
            user_id=user_id,
            name="test",
            period=fields.pop("period", "monthly"),
            limit_nanousd=limit,
            period_started_at=fields.pop("period_started_at", utcnow()),
            **fields,
        )
        session.add(budget)
        await session.flush()
        return budget.id


def _usage() -> service.UsageData:
    return service.UsageData(endpoint="chat", model="m", provider="p", status="success")


async def test_concurrent_reservations_never_exceed_the_limit(app: Any, actors: Actors) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=1000 * 7)
    factory = app.state.enclava.session_factory

    async def attempt() -> bool:
        try:
            reservation = await service.reserve(factory, subject, 1000)
        except QuotaExceededError:
            return False
        await asyncio.sleep(0)
        await service.settle(factory, subject, reservation, 1000, _usage())
        return True

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert sum(results) == 7
    async with transaction(factory) as session:
        budget = await session.get(Budget, budget_id)
        assert budget is not None
        assert budget.spent_nanousd == 7000 and budget.reserved_nanousd == 0
        rows = await session.scalar(select(func.count()).select_from(UsageRecord))
        assert rows == 7


async def test_settle_charges_real_cost_and_releases_rest(app: Any, actors: Actors) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=10_000, soft_thresholds=[50, 90])
    factory = app.state.enclava.session_factory
    reservation = await service.reserve(factory, subject, 8_000)
    with pytest.raises(QuotaExceededError):
        await service.reserve(factory, subject, 3_000)
    crossings = await service.settle(factory, subject, reservation, 6_000, _usage())
    assert [c.threshold_percent for c in crossings] == [50]
    async with transaction(factory) as session:
        budget = await session.get(Budget, budget_id)
        assert budget is not None
        assert (budget.spent_nanousd, budget.reserved_nanousd) == (6_000, 0)
    # The next 50 % crossing is not reported again; 90 % is.
    second = await service.reserve(factory, subject, 3_500)
    crossings = await service.settle(factory, subject, second, 3_500, _usage())
    assert [c.threshold_percent for c in crossings] == [90]


async def test_elapsed_period_starts_fresh(app: Any, actors: Actors) -> None:
    from datetime import timedelta

    owner = await actors.user()
    subject = await _subject(app, owner)
    await _budget(
        app,
        owner["id"],
        limit=1_000,
        period="daily",
        spent_nanousd=1_000,
        period_started_at=utcnow() - timedelta(days=2),
    )
    reservation = await service.reserve(app.state.enclava.session_factory, subject, 900)
    assert reservation.budget_ids


async def test_reservation_in_a_caller_session_is_atomic_and_refusal_leaves_nothing(
    app: Any, actors: Actors
) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=5_000)
    factory = app.state.enclava.session_factory
    async with transaction(factory) as session:
        reservation = await service.reserve(factory, subject, 4_000, session=session)
        assert reservation.budget_ids == (budget_id,)
    async with transaction(factory) as session:
        with pytest.raises(QuotaExceededError):
            await service.reserve(factory, subject, 2_000, session=session)
    async with transaction(factory) as session:
        budget = await session.get(Budget, budget_id)
        assert budget is not None and budget.reserved_nanousd == 4_000


async def test_threshold_crossings_reach_listeners(app: Any, actors: Actors) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    await _budget(app, owner["id"], limit=10_000, soft_thresholds=[50])
    factory = app.state.enclava.session_factory
    heard: list[service.ThresholdCrossing] = []
    service.threshold_listeners.append(heard.append)
    try:
        reservation = await service.reserve(factory, subject, 6_000)
        crossings = await service.settle(factory, subject, reservation, 6_000, _usage())
        service.report_crossings(crossings)
    finally:
        service.threshold_listeners.remove(heard.append)
    assert [(c.threshold_percent, c.spent_nanousd) for c in heard] == [(50, 6_000)]


async def test_settlement_queue_groups_concurrent_calls_and_keeps_totals_exact(
    app: Any, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=100_000, soft_thresholds=[1])
    factory = app.state.enclava.session_factory
    writes: list[int] = []
    real = service.settle_many

    async def counting(factory: Any, items: Any, **kwargs: Any) -> Any:
        writes.append(len(items))
        return await real(factory, items, **kwargs)

    monkeypatch.setattr(service, "settle_many", counting)
    queue = service.SettlementQueue(factory, audit=True)
    reservations = [await service.reserve(factory, subject, 1_000) for _ in range(40)]
    results = await asyncio.gather(
        *(
            queue.settle(service.Settlement(subject, r, 600 + i, _usage()))
            for i, r in enumerate(reservations)
        )
    )
    await queue.drain()
    assert sum(writes) == 40 and len(writes) < 40  # grouped into fewer writes
    # The 1 % threshold is crossed once, and reported to exactly one caller.
    assert sum(len(r) for r in results) == 1
    async with transaction(factory) as session:
        budget = await session.get(Budget, budget_id)
        assert budget is not None
        assert budget.reserved_nanousd == 0
        assert budget.spent_nanousd == sum(600 + i for i in range(40))
        assert await session.scalar(select(func.count()).select_from(UsageRecord)) == 40


async def test_one_failing_settlement_does_not_sink_its_batch(
    app: Any, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    factory = app.state.enclava.session_factory
    real = service.settle_many

    async def refusing(factory: Any, items: Any, **kwargs: Any) -> Any:
        if any(item.usage.model == "poison" for item in items):
            raise RuntimeError("row refused")
        return await real(factory, items, **kwargs)

    monkeypatch.setattr(service, "settle_many", refusing)
    queue = service.SettlementQueue(factory, audit=False)
    usages = [_usage() for _ in range(6)]
    usages[2].model = "poison"
    outcomes = await asyncio.gather(
        *(
            queue.settle(service.Settlement(subject, service.Reservation((), 0), 5, u))
            for u in usages
        ),
        return_exceptions=True,
    )
    assert [isinstance(o, RuntimeError) for o in outcomes] == [
        False,
        False,
        True,
        False,
        False,
        False,
    ]
    async with transaction(factory) as session:
        assert await session.scalar(select(func.count()).select_from(UsageRecord)) == 5
