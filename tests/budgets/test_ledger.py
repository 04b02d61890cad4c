"""The budget ledger on its own: the same behaviour from the memory and the Redis ledger (Redis
where the run has one: the postgres backend)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from enclava.budgets.ledger import (
    BudgetLedger,
    CounterLoad,
    MemoryLedger,
    Outcome,
    Owner,
    OwnerLoad,
    RedisLedger,
    Reservation,
    counter_name,
)
from tests.conftest import BACKEND, REDIS_URL

KINDS = ["memory", "redis"] if BACKEND == "postgres" else ["memory"]
STARTS = {"daily": 1_800_000_000, "weekly": 1_799_700_000, "monthly": 1_798_000_000, "total": 0}


@pytest.fixture(params=KINDS)
async def ledger(request: pytest.FixtureRequest) -> AsyncIterator[BudgetLedger]:
    if request.param == "memory":
        yield MemoryLedger()
        return
    client = aioredis.Redis.from_url(REDIS_URL)
    redis_ledger = RedisLedger(client, prefix=f"test:{uuid.uuid4().hex}:", owns_client=True)
    yield redis_ledger
    await redis_ledger.close()


async def lose_counters(ledger: BudgetLedger) -> None:
    """What a store losing its data does to the counters (definitions survive here)."""
    if isinstance(ledger, MemoryLedger):
        ledger._counters.clear()
        ledger._latest.clear()
        return
    assert isinstance(ledger, RedisLedger)
    keys = [k async for k in ledger._redis.scan_iter(match=ledger._counter_key("*"))]
    await ledger._redis.delete(*keys)


def owner() -> Owner:
    return ("user", uuid.uuid4())


async def load(
    ledger: BudgetLedger, who: Owner, budgets: list[tuple[uuid.UUID, int, str]], spent: int = 0
) -> None:
    [generation] = await ledger.generations([who])
    definitions = [{"id": str(b), "limit": limit, "period": p} for b, limit, p in budgets]
    counters = [CounterLoad(counter_name(b, p, STARTS[p]), p, spent) for b, _, p in budgets]
    await ledger.load([OwnerLoad(who, generation, definitions)], counters)


async def reserved(ledger: BudgetLedger, budget_id: uuid.UUID, period: str = "monthly") -> int:
    [value] = await ledger.reserved([counter_name(budget_id, period, STARTS[period])])
    return value


async def admitted(ledger: BudgetLedger, who: Owner, amount: int) -> Reservation:
    outcome = await ledger.reserve([who], amount, STARTS)
    assert isinstance(outcome, Reservation), outcome
    return outcome


async def test_a_refusal_changes_nothing(ledger: BudgetLedger) -> None:
    who = owner()
    roomy, tight = uuid.uuid4(), uuid.uuid4()
    await load(ledger, who, [(roomy, 10_000, "monthly"), (tight, 1_000, "daily")])
    first = await admitted(ledger, who, 600)
    assert {c.budget_id for c in first.charges} == {roomy, tight}
    # Fits the roomy budget, not the tight one: neither is touched.
    assert await ledger.reserve([who], 500, STARTS) is Outcome.REFUSED
    assert await reserved(ledger, roomy) == 600
    assert await reserved(ledger, tight, "daily") == 600
    await admitted(ledger, who, 400)  # exactly the rest
    assert await ledger.reserve([who], 1, STARTS) is Outcome.REFUSED


async def test_owners_load_lazily_and_no_budget_is_an_empty_reservation(
    ledger: BudgetLedger,
) -> None:
    who, budget_id = owner(), uuid.uuid4()
    assert await ledger.reserve([who], 5, STARTS) is Outcome.NEED_LOAD
    # Definitions without the counter of the current period: still something to load.
    [generation] = await ledger.generations([who])
    definition = {"id": str(budget_id), "limit": 100, "period": "weekly"}
    await ledger.load([OwnerLoad(who, generation, [definition])], [])
    assert await ledger.reserve([who], 5, STARTS) is Outcome.NEED_LOAD
    counter = CounterLoad(counter_name(budget_id, "weekly", STARTS["weekly"]), "weekly", 90)
    await ledger.load([], [counter])
    assert (await admitted(ledger, who, 10)).budget_ids == (budget_id,)
    # Loading again never resets a live counter.
    await ledger.load([], [CounterLoad(counter.counter, "weekly", 0)])
    assert await ledger.reserve([who], 1, STARTS) is Outcome.REFUSED
    # An owner without budgets loads once, as an empty list, and reserves nothing.
    free = owner()
    await load(ledger, free, [])
    assert (await admitted(ledger, free, 10**12)).charges == ()


async def test_invalidation_racing_a_load_never_installs_stale_definitions(
    ledger: BudgetLedger,
) -> None:
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "monthly")])
    await admitted(ledger, who, 900)
    # A load reads the generation, then the database (old limit)...
    [seen] = await ledger.generations([who])
    stale = [{"id": str(budget_id), "limit": 1_000_000, "period": "monthly"}]
    # ... meanwhile the budget changes and is invalidated after its commit ...
    await ledger.invalidate_owner(who)
    # ... so the load's definitions are not installed.
    await ledger.load([OwnerLoad(who, seen, stale)], [])
    assert await ledger.reserve([who], 200, STARTS) is Outcome.NEED_LOAD
    # A load that started after the invalidation installs what it read.
    [fresh] = await ledger.generations([who])
    assert fresh != seen
    current = [{"id": str(budget_id), "limit": 1_050, "period": "monthly"}]
    await ledger.load([OwnerLoad(who, fresh, current)], [])
    # The counter survived the invalidation: the 900 in flight still count.
    assert await ledger.reserve([who], 200, STARTS) is Outcome.REFUSED
    await admitted(ledger, who, 150)


async def test_settle_releases_and_charges(ledger: BudgetLedger) -> None:
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "monthly")])
    reservation = await admitted(ledger, who, 700)
    await ledger.settle([(reservation, 250)])
    assert await reserved(ledger, budget_id) == 0
    await admitted(ledger, who, 750)  # 250 spent + 750 = the limit
    assert await ledger.reserve([who], 1, STARTS) is Outcome.REFUSED


async def test_a_new_period_counts_from_its_own_start(ledger: BudgetLedger) -> None:
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "daily")], spent=1_000)
    assert await ledger.reserve([who], 1, STARTS) is Outcome.REFUSED
    tomorrow = {**STARTS, "daily": STARTS["daily"] + 86_400}
    assert await ledger.reserve([who], 1, tomorrow) is Outcome.NEED_LOAD
    counter = CounterLoad(counter_name(budget_id, "daily", tomorrow["daily"]), "daily", 0)
    await ledger.load([], [counter])
    outcome = await ledger.reserve([who], 1_000, tomorrow)
    assert isinstance(outcome, Reservation)
    assert outcome.charges[0].period_start == tomorrow["daily"]


async def test_settling_into_a_rebuilt_counter_never_under_counts(ledger: BudgetLedger) -> None:
    """The store lost the counter while a call was in flight and it was rebuilt from the
    database. The settlement cannot tell whether the rebuild saw its cost, so it counts it."""
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "monthly")])
    in_flight = await admitted(ledger, who, 600)
    await lose_counters(ledger)
    # Rebuilt before the call's database commit: the database had not seen the 600 yet.
    await load(ledger, who, [(budget_id, 1_000, "monthly")], spent=0)
    await admitted(ledger, who, 100)
    await ledger.settle([(in_flight, 600)])
    assert await reserved(ledger, budget_id) == 100  # only the new epoch's reservation
    assert await ledger.reserve([who], 301, STARTS) is Outcome.REFUSED  # 600 + 100 + 301
    await admitted(ledger, who, 300)

    # Rebuilt after the commit: the database had the 600; counting it again errs safe.
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "monthly")])
    in_flight = await admitted(ledger, who, 600)
    await lose_counters(ledger)
    await load(ledger, who, [(budget_id, 1_000, "monthly")], spent=600)
    await ledger.settle([(in_flight, 600)])
    assert await ledger.reserve([who], 1, STARTS) is Outcome.REFUSED

    # Settling into a counter that is gone changes nothing; the next load reads the database.
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "monthly")])
    in_flight = await admitted(ledger, who, 600)
    await lose_counters(ledger)
    await ledger.settle([(in_flight, 600)])
    assert await ledger.reserve([who], 1, STARTS) is Outcome.NEED_LOAD


async def test_a_batch_settles_each_reservation(ledger: Any) -> None:
    who, budget_id = owner(), uuid.uuid4()
    await load(ledger, who, [(budget_id, 10_000, "total")])
    reservations = [await admitted(ledger, who, 1_000) for _ in range(5)]
    await ledger.settle([(r, 100 * i) for i, r in enumerate(reservations)])
    assert await reserved(ledger, budget_id, "total") == 0
    await admitted(ledger, who, 10_000 - 1_000)  # 0 + 100 + 200 + 300 + 400 spent
    assert await ledger.reserve([who], 1, STARTS) is Outcome.REFUSED


async def test_a_call_that_never_settles_holds_only_until_its_hold_lapses(
    ledger: BudgetLedger,
) -> None:
    """A call whose instance died never settles. On Redis its reservation is a hold that lapses
    after the hold TTL (here 0.2 s), and the next reservation on the counter releases it; a
    settlement that still comes later charges its cost without releasing anything twice. In
    memory the reservation lives exactly as long as the process that held it."""
    who = owner()
    budget_id = uuid.uuid4()
    await load(ledger, who, [(budget_id, 1_000, "monthly")])
    if isinstance(ledger, RedisLedger):
        ledger._hold_ttl_ms = 200
    crashed = await admitted(ledger, who, 600)
    assert await ledger.reserve([who], 600, STARTS) is Outcome.REFUSED
    if isinstance(ledger, MemoryLedger):
        await asyncio.sleep(0.3)
        assert await reserved(ledger, budget_id) == 600
        return

    await asyncio.sleep(0.3)
    live = await admitted(ledger, who, 600)  # the lapsed hold was released first
    assert await reserved(ledger, budget_id) == 600
    await ledger.settle([(crashed, 100)])  # late: charged, nothing released twice
    assert await reserved(ledger, budget_id) == 600
    await ledger.settle([(live, 200)])
    assert await reserved(ledger, budget_id) == 0
    assert await ledger.reserve([who], 701, STARTS) is Outcome.REFUSED  # 300 spent of 1,000
    assert isinstance(await ledger.reserve([who], 700, STARTS), Reservation)
