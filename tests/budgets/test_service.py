from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from enclava.auth import repository as users
from enclava.auth.subject import AuthSubject
from enclava.budgets import service
from enclava.budgets.ledger import get_ledger
from enclava.db import transaction
from enclava.errors import QuotaExceededError
from enclava.kit.time import utcnow
from enclava.models import AuditLog, Budget, UsageRecord
from tests.conftest import Actors
from tests.llm.helpers import budget as budget_state


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
    state = app.state.enclava

    async def attempt() -> bool:
        try:
            reservation = await service.reserve(state, subject, 1000)
        except QuotaExceededError:
            return False
        await asyncio.sleep(0)
        await service.settle(state, subject, reservation, 1000, _usage())
        return True

    results = await asyncio.gather(*(attempt() for _ in range(50)))
    assert sum(results) == 7
    budget = await budget_state(app, budget_id)
    assert budget.spent_nanousd == 7000 and budget.reserved_nanousd == 0
    async with transaction(state.session_factory) as session:
        rows = await session.scalar(select(func.count()).select_from(UsageRecord))
        assert rows == 7


async def test_settle_charges_real_cost_and_releases_rest(app: Any, actors: Actors) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=10_000, soft_thresholds=[50, 90])
    state = app.state.enclava
    reservation = await service.reserve(state, subject, 8_000)
    assert (await budget_state(app, budget_id)).reserved_nanousd == 8_000
    with pytest.raises(QuotaExceededError):
        await service.reserve(state, subject, 3_000)
    crossings = await service.settle(state, subject, reservation, 6_000, _usage())
    assert [c.threshold_percent for c in crossings] == [50]
    budget = await budget_state(app, budget_id)
    assert (budget.spent_nanousd, budget.reserved_nanousd) == (6_000, 0)
    # The released 2,000 are available again: 6,000 + 4,000 fits exactly.
    second = await service.reserve(state, subject, 4_000)
    # The next 50 % crossing is not reported again; 90 % is.
    crossings = await service.settle(state, subject, second, 3_500, _usage())
    assert [c.threshold_percent for c in crossings] == [90]


async def test_elapsed_period_starts_fresh(app: Any, actors: Actors) -> None:
    """The row still holds the old period's spend: the new period's counter starts from 0,
    and the first settlement rolls the row over to the new period."""
    from datetime import timedelta

    from enclava.budgets.periods import period_start

    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(
        app,
        owner["id"],
        limit=1_000,
        period="daily",
        spent_nanousd=1_000,
        notified_threshold=80,
        soft_thresholds=[80],
        period_started_at=utcnow() - timedelta(days=2),
    )
    state = app.state.enclava
    reservation = await service.reserve(state, subject, 900)
    assert reservation.budget_ids == (budget_id,)
    with pytest.raises(QuotaExceededError):
        await service.reserve(state, subject, 101)
    crossings = await service.settle(state, subject, reservation, 850, _usage())
    assert [c.threshold_percent for c in crossings] == [80]  # reported again in the new period
    budget = await budget_state(app, budget_id)
    assert (budget.spent_nanousd, budget.reserved_nanousd) == (850, 0)
    assert budget.row.period_started_at == period_start("daily", utcnow())
    await service.reserve(state, subject, 150)  # 850 + 150 fits exactly
    with pytest.raises(QuotaExceededError):
        await service.reserve(state, subject, 1)


async def test_refusal_holds_nothing_and_key_and_owner_budgets_both_apply(
    app: Any, actors: Actors
) -> None:
    owner = await actors.user()
    key = await actors.api_key(owner)
    user_budget = await _budget(app, owner["id"], limit=5_000)
    async with transaction(app.state.enclava.session_factory) as session:
        row = Budget(
            api_key_id=key["id"],
            name="key",
            period="weekly",
            limit_nanousd=3_000,
            period_started_at=utcnow(),
        )
        session.add(row)
        await session.flush()
        key_budget = row.id
    from enclava.api_keys import lookup

    state = app.state.enclava
    subject = await lookup.authenticate(state, key["key"])
    reservation = await service.reserve(state, subject, 2_000)
    assert set(reservation.budget_ids) == {user_budget, key_budget}
    with pytest.raises(QuotaExceededError):
        await service.reserve(state, subject, 1_500)  # fits the user's, not the key's
    assert (await budget_state(app, user_budget)).reserved_nanousd == 2_000
    assert (await budget_state(app, key_budget)).reserved_nanousd == 2_000
    # The owner's own calls (no key) see only the owner's budget.
    await service.reserve(state, await _subject(app, owner), 3_000)
    assert (await budget_state(app, user_budget)).reserved_nanousd == 5_000
    assert (await budget_state(app, key_budget)).reserved_nanousd == 2_000


async def test_threshold_crossings_reach_listeners(app: Any, actors: Actors) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    await _budget(app, owner["id"], limit=10_000, soft_thresholds=[50])
    state = app.state.enclava
    heard: list[service.ThresholdCrossing] = []
    service.threshold_listeners.append(heard.append)
    try:
        reservation = await service.reserve(state, subject, 6_000)
        crossings = await service.settle(state, subject, reservation, 6_000, _usage())
        service.report_crossings(crossings)
    finally:
        service.threshold_listeners.remove(heard.append)
    assert [(c.threshold_percent, c.spent_nanousd) for c in heard] == [(50, 6_000)]


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every settlement write from now on."""
    writes: list[int] = []
    real = service.settle_many

    async def counting(factory: Any, items: Any, **kwargs: Any) -> Any:
        writes.append(len(items))
        return await real(factory, items, **kwargs)

    monkeypatch.setattr(service, "settle_many", counting)
    return writes


async def test_settlement_queue_groups_concurrent_calls_and_keeps_totals_exact(
    app: Any, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=100_000, soft_thresholds=[1])
    state = app.state.enclava
    factory = state.session_factory
    writes = _count_writes(monkeypatch)
    queue = service.SettlementQueue(factory, get_ledger(state), audit=True)
    reservations = [await service.reserve(state, subject, 1_000) for _ in range(40)]
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
    budget = await budget_state(app, budget_id)
    assert budget.reserved_nanousd == 0
    assert budget.spent_nanousd == sum(600 + i for i in range(40))
    async with transaction(factory) as session:
        assert await session.scalar(select(func.count()).select_from(UsageRecord)) == 40
    # The ledger counted the same spend as the database: 100,000 - 40 x 600 - 780 is left.
    left = 100_000 - budget.spent_nanousd
    await service.reserve(state, subject, left)
    with pytest.raises(QuotaExceededError):
        await service.reserve(state, subject, 1)


async def test_settlements_arriving_one_after_another_are_written_together(
    app: Any, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Calls that settle a moment apart (concurrency 1) share a write: the queue lingers
    before writing, and a drain (a read that must see the calls) cuts the linger short."""
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=100_000)
    state = app.state.enclava
    writes = _count_writes(monkeypatch)
    # A linger far longer than the test: only a drain cutting it short lets the test finish.
    queue = service.SettlementQueue(
        state.session_factory, get_ledger(state), audit=False, linger_s=600
    )
    futures = []
    for _ in range(5):
        reservation = await service.reserve(state, subject, 100)
        futures.append(queue.submit(service.Settlement(subject, reservation, 60, _usage())))
        await asyncio.sleep(0.001)
    assert writes == [] and not any(f.done() for f in futures)
    await asyncio.wait_for(queue.drain(), timeout=30)
    assert writes == [5] and all(f.result() == [] for f in futures)
    budget = await budget_state(app, budget_id)
    assert (budget.spent_nanousd, budget.reserved_nanousd) == (300, 0)


async def test_one_failing_settlement_does_not_sink_its_batch(
    app: Any, actors: Actors, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = await actors.user()
    subject = await _subject(app, owner)
    budget_id = await _budget(app, owner["id"], limit=100_000)
    state = app.state.enclava
    factory = state.session_factory
    real = service.settle_many

    async def refusing(factory: Any, items: Any, **kwargs: Any) -> Any:
        if any(item.usage.model == "poison" for item in items):
            raise RuntimeError("row refused")
        return await real(factory, items, **kwargs)

    monkeypatch.setattr(service, "settle_many", refusing)
    queue = service.SettlementQueue(factory, get_ledger(state), audit=False)
    usages = [_usage() for _ in range(6)]
    usages[2].model = "poison"
    reservations = [await service.reserve(state, subject, 10) for _ in usages]
    outcomes = await asyncio.gather(
        *(
            queue.settle(service.Settlement(subject, r, 5, u))
            for r, u in zip(reservations, usages, strict=True)
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
    # The failed call's reservation stays held (errs safe); the others were released.
    budget = await budget_state(app, budget_id)
    assert (budget.spent_nanousd, budget.reserved_nanousd) == (25, 10)


async def test_settled_rows_read_back_exactly_as_written(app: Any, actors: Actors) -> None:
    """Every column of the usage and audit rows a batch writes comes back as it was given:
    identifiers, timestamps with their zone, flags, JSON details, NULLs, non-ASCII text and
    costs near the 64-bit limit (SQLite writes a batch from one JSON parameter)."""
    owner = await actors.user()
    subject = await _subject(app, owner)
    state = app.state.enclava
    factory = state.session_factory
    ok = service.UsageData(
        endpoint="chat",
        model="modèle-ü 模型",
        provider="p",
        status="success",
        prompt_tokens=12,
        completion_tokens=30,
        latency_ms=987,
        streamed=True,
        request_id="req-1",
    )
    failed = service.UsageData(
        endpoint="embeddings", model="e", provider="p", status="error", error_code="timeout"
    )
    costs = [9_000_000_000_000_000_123, 0]
    items = [
        service.Settlement(subject, await service.reserve(state, subject, 1), cost, usage)
        for cost, usage in zip(costs, [ok, failed], strict=True)
    ]
    before = utcnow()
    await service.settle_many(factory, items, audit=True)
    async with transaction(factory) as session:
        usage = {
            u.model: u
            for u in await session.scalars(
                select(UsageRecord).where(UsageRecord.user_id == owner["id"])
            )
        }
        audits = {
            a.resource_id: a
            for a in await session.scalars(
                select(AuditLog).where(
                    AuditLog.user_id == owner["id"], AuditLog.action.like("llm.%")
                )
            )
        }
    assert set(usage) == set(audits) == {ok.model, "e"}
    row = usage[ok.model]
    assert isinstance(row.id, uuid.UUID) and row.api_key_id is None
    assert row.user_id == owner["id"]
    assert before <= row.created_at <= utcnow() and row.created_at.tzinfo is not None
    assert (row.endpoint, row.provider, row.status, row.request_id) == (
        "chat",
        "p",
        "success",
        "req-1",
    )
    assert (row.prompt_tokens, row.completion_tokens, row.total_tokens) == (12, 30, 42)
    assert (row.cost_nanousd, row.latency_ms, row.streamed, row.error_code) == (
        costs[0],
        987,
        True,
        None,
    )
    other = usage["e"]
    assert (other.status, other.error_code, other.streamed, other.cost_nanousd) == (
        "error",
        "timeout",
        False,
        0,
    )
    audit = audits[ok.model]
    assert audit.action == "llm.chat" and audit.success is True and audit.request_id == "req-1"
    assert audit.details == {
        "provider": "p",
        "status": "success",
        "prompt_tokens": 12,
        "completion_tokens": 30,
        "cost_nanousd": costs[0],
        "streamed": True,
    }
    assert audit.created_at == row.created_at
    assert audits["e"].success is False and audits["e"].details["status"] == "error"
