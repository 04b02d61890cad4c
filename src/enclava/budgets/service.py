"""Budgets: reserve the worst case before an LLM call, settle to the real cost after.

``reserve`` is one atomic step on the budget ledger (budgets/ledger.py: a Lua script on Redis,
plain synchronous code in memory) over every active budget that applies to the caller (the
key's and its owner's): it adds the amount to each one's ``reserved`` only if every one still
has ``spent + reserved + amount <= limit``, else changes nothing. The ledger loads lazily from
the database, which stays the durable record. ``settle`` writes the usage row and charges the
real cost to ``spent_nanousd`` in one database transaction, then releases the reservation in
the ledger. Money is integer nano-dollars. If the ledger or the database cannot be reached the
call is refused (fail closed). See docs/decisions/0009-budget-ledger.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.budgets import repository
from enclava.budgets.ledger import (
    BudgetLedger,
    CounterLoad,
    Outcome,
    Owner,
    OwnerLoad,
    counter_name,
    get_ledger,
    unavailable,
)
from enclava.budgets.ledger import Reservation as Reservation  # what callers settle
from enclava.budgets.periods import PERIODS, period_start
from enclava.db import SessionFactory, read_only_engine
from enclava.errors import (
    AppError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
)
from enclava.kit.logging import request_id_var
from enclava.kit.time import utcnow
from enclava.models import Budget
from enclava.state import AppState

logger = logging.getLogger(__name__)

NANOUSD_PER_USD = 1_000_000_000
# Loads before giving up when budget definitions keep changing under a reservation.
_MAX_LOADS = 3


@dataclass(frozen=True, slots=True)
class ThresholdCrossing:
    """A budget passed one of its soft thresholds (for ``budget.threshold_exceeded``)."""

    budget_id: uuid.UUID
    threshold_percent: int
    spent_nanousd: int
    limit_nanousd: int
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None


@dataclass(slots=True)
class UsageData:
    """What one call used; becomes the ``usage_tracking`` row."""

    endpoint: str
    model: str
    provider: str
    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int = 0
    streamed: bool = False
    error_code: str | None = None
    request_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _engine(factory: SessionFactory) -> AsyncEngine:
    engine = factory.kw.get("bind")
    assert isinstance(engine, AsyncEngine), "the session factory must be bound to an engine"
    return engine


_period_starts: tuple[date, dict[str, int]] | None = None


def current_period_starts(now: datetime | None = None) -> dict[str, int]:
    """Where the current period of each kind started (unix seconds); the same all day."""
    global _period_starts
    now = now or utcnow()
    today = now.astimezone(UTC).date()
    if _period_starts is None or _period_starts[0] != today:
        _period_starts = (today, {p: int(period_start(p, now).timestamp()) for p in PERIODS})
    return _period_starts[1]


def owners_of(subject: AuthSubject) -> tuple[Owner, ...]:
    if subject.api_key is None:
        return (("user", subject.user_id),)
    return (("key", subject.api_key.id), ("user", subject.user_id))


def quota_exceeded() -> QuotaExceededError:
    return QuotaExceededError(
        "Budget exhausted: this request could cost more than the remaining budget",
        code="insufficient_quota",
    )


async def reserve(state: AppState, subject: AuthSubject, amount_nanousd: int) -> Reservation:
    """Hold ``amount_nanousd`` on every budget that applies, or raise ``QuotaExceededError``
    (429 ``insufficient_quota``; nothing is held then). Touches no database transaction: the
    ledger is read from the database only when it lacks an owner's budgets or a counter."""
    if amount_nanousd < 0:
        raise ValueError("reservation amount must not be negative")
    ledger = get_ledger(state)
    owners = owners_of(subject)
    starts = current_period_starts()
    for _ in range(_MAX_LOADS + 1):
        outcome = await ledger.reserve(owners, amount_nanousd, starts)
        if isinstance(outcome, Reservation):
            return outcome
        if outcome is Outcome.REFUSED:
            raise quota_exceeded()
        await _load(state, ledger, subject, owners, starts)
    raise unavailable(RuntimeError("budget definitions kept changing while loading"))


async def _load(
    state: AppState,
    ledger: BudgetLedger,
    subject: AuthSubject,
    owners: Sequence[Owner],
    starts: dict[str, int],
) -> None:
    """Read the owners' active budgets (a pure read, outside any write transaction) and load
    the ledger with them. The generations are read first, so an invalidation that lands
    while the database is read makes the load skip the (possibly stale) definitions."""
    generations = await ledger.generations(owners)
    api_key_id = subject.api_key.id if subject.api_key else None
    statement = repository.owner_budgets(api_key_id is not None)
    try:
        async with read_only_engine(state.engine).connect() as conn:
            params = repository.owner_params(subject.user_id, api_key_id)
            rows = (await conn.execute(statement, params)).all()
    except (OperationalError, DBAPIError, OSError) as exc:
        raise unavailable(exc) from exc
    owner_loads = []
    counters = []
    for owner, generation in zip(owners, generations, strict=True):
        kind, owner_id = owner
        mine = [r for r in rows if (r.api_key_id if kind == "key" else r.user_id) == owner_id]
        definitions = [
            {"id": str(r.id), "limit": r.limit_nanousd, "period": r.period} for r in mine
        ]
        owner_loads.append(OwnerLoad(owner, generation, definitions))
        for row in mine:
            start = starts[row.period]
            # The row's spend counts while its period is the current one (or a later one, if
            # this instance's clock is behind: counting it then errs on the safe side).
            current = row.period_started_at.timestamp() >= start
            spent = row.spent_nanousd if current else 0
            counters.append(CounterLoad(counter_name(row.id, row.period, start), row.period, spent))
    await ledger.load(owner_loads, counters)


@dataclass(slots=True)
class Settlement:
    """One call to settle: who pays, what was reserved, what it really cost, what it used."""

    subject: AuthSubject
    reservation: Reservation
    cost_nanousd: int
    usage: UsageData


async def settle(
    state: AppState,
    subject: AuthSubject,
    reservation: Reservation,
    cost_nanousd: int,
    usage: UsageData,
    *,
    audit: bool = False,
) -> list[ThresholdCrossing]:
    """Write the usage row (and, with ``audit``, an audit row) and charge the real cost in one
    transaction, then release the reservation in the ledger."""
    item = Settlement(subject, reservation, cost_nanousd, usage)
    [crossings] = await settle_many(state.session_factory, [item], audit=audit)
    await _settle_ledger(get_ledger(state), [item])
    return crossings


async def _settle_ledger(ledger: BudgetLedger, items: Sequence[Settlement]) -> None:
    """After the database committed: release the reservations, count the costs. If the ledger
    cannot be reached the reservations stay held, which errs on the safe side."""
    try:
        await ledger.settle(
            [(i.reservation, i.cost_nanousd) for i in items if i.reservation.charges]
        )
    except AppError:
        logger.error("settled calls still held in the budget ledger", extra={"calls": len(items)})


async def settle_many(
    factory: SessionFactory, items: Sequence[Settlement], *, audit: bool = False
) -> list[list[ThresholdCrossing]]:
    """Settle several calls in the database in one atomic write (group commit): all usage rows
    (and audit rows) in one multi-row insert each, and one update per budget with the sum of
    what the calls cost. Returns each call's threshold crossings (a crossing is reported to
    the first call that charged its budget). The ledger is the caller's (``settle``,
    ``SettlementQueue``)."""
    if any(item.cost_nanousd < 0 for item in items):
        raise ValueError("cost must not be negative")
    now = utcnow()
    usage_rows = []
    audit_rows = []
    # Per budget and period kind: the latest period start charged and the summed cost (a
    # batch that straddles a period boundary charges the new period, erring on the safe side).
    charges: dict[tuple[uuid.UUID, str], tuple[datetime, int]] = {}
    first_charger: dict[uuid.UUID, int] = {}
    for index, item in enumerate(items):
        api_key_id = item.subject.api_key.id if item.subject.api_key else None
        usage_rows.append(
            _usage_values(item.subject, api_key_id, item.cost_nanousd, item.usage, now)
        )
        if audit:
            audit_rows.append(
                _audit_values(item.subject, api_key_id, item.cost_nanousd, item.usage, now)
            )
        for charge in item.reservation.charges:
            start = datetime.fromtimestamp(charge.period_start, UTC)
            key = (charge.budget_id, charge.period)
            latest, cost = charges.get(key, (start, 0))
            charges[key] = (max(latest, start), cost + item.cost_nanousd)
            first_charger.setdefault(charge.budget_id, index)
    engine = _engine(factory)
    crossings: list[ThresholdCrossing] = []
    if engine.dialect.name == "postgresql":
        # One auto-committed statement: the budget rows are locked only while it runs.
        statement = repository.settle_batch_in_one_statement(bool(charges), bool(audit_rows))
        params = repository.batch_params(usage_rows, audit_rows, charges)
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            rows = (await conn.execute(statement, params)).all()
            if charges:
                crossings = await _check_thresholds(conn, rows)
    else:
        async with engine.begin() as conn:
            dialect = engine.dialect
            for kind, batch in (("usage", usage_rows), ("audit", audit_rows)):
                if batch:
                    await conn.execute(
                        repository.insert_json_rows(kind),
                        {"rows": repository.json_rows(dialect, kind, batch)},
                    )
            if charges:
                # Last, so the budget rows are held for as little as possible after it.
                rows = []
                for (budget_id, period), (start, cost) in charges.items():
                    params = {
                        "budget_id": budget_id,
                        "charge_period": period,
                        "start": start,
                        "cost": cost,
                    }
                    rows.extend((await conn.execute(repository.charge_one(), params)).all())
                crossings = await _check_thresholds(conn, rows)
    result: list[list[ThresholdCrossing]] = [[] for _ in items]
    for crossing in crossings:
        result[first_charger[crossing.budget_id]].append(crossing)
    return result


class SettlementQueue:
    """Group commit for settlements: calls that settle while a write is in flight are
    written together by the next one, so under load the cost of a settlement is shared.
    Before each write the queue lingers ``linger_s`` (unless a full batch is waiting), so
    calls that arrive one after another are written together too: settlements are written
    behind the responses, so nobody waits for the linger (``drain``, for reads that must see
    the calls and for shutdown, cuts it short). Each caller gets its own result or exception.
    After each database write the batch is settled in the ledger (one step for the batch); if
    the write fails, the batch's reservations stay held in the ledger.

    A write costs about the same at any batch size (one statement per table, see
    ``repository.insert_json_rows``): each step waits for a turn of the event loop, which is
    long when the loop is saturated. Batches of up to ``max_batch`` (1,000) let the writer keep
    up there; with batches of 200 it fell behind at ~2,000 calls/s on two cores embedded."""

    def __init__(
        self,
        factory: SessionFactory,
        ledger: BudgetLedger,
        *,
        audit: bool,
        max_batch: int = 1000,
        linger_s: float = 0.0,
    ) -> None:
        self._factory = factory
        self._linger_s = linger_s
        self._ledger = ledger
        self._audit = audit
        self._max_batch = max_batch
        self._pending: list[tuple[Settlement, asyncio.Future[list[ThresholdCrossing]]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._in_flight = 0
        self._hurry = asyncio.Event()

    @property
    def in_flight(self) -> int:
        """Settlements submitted and not yet written (or failed)."""
        return self._in_flight

    def submit(self, item: Settlement) -> asyncio.Future[list[ThresholdCrossing]]:
        """Queue a settlement without waiting for it: the future ends with its threshold
        crossings once written, or with the write's exception. Cancelling the future does not
        stop the write."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[ThresholdCrossing]] = loop.create_future()
        self._in_flight += 1
        future.add_done_callback(self._done)
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())
        return future

    def _done(self, _: asyncio.Future[list[ThresholdCrossing]]) -> None:
        self._in_flight -= 1

    async def settle(self, item: Settlement) -> list[ThresholdCrossing]:
        """Queue a settlement and wait until it is written."""
        return await asyncio.shield(self.submit(item))

    async def _write(self) -> None:
        while self._pending:
            if self._linger_s and len(self._pending) < self._max_batch:
                # A drain (a read that must see these calls, or shutdown) cuts it short.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._hurry.wait(), self._linger_s)
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            items = [item for item, _ in batch]
            try:
                results = await settle_many(self._factory, items, audit=self._audit)
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(exc)
                    continue
                # One bad settlement must not take the others down with it: write each alone.
                self._pending[:0] = [(item, future) for item, future in batch]
                await self._write_one_by_one(len(batch))
                continue
            await _settle_ledger(self._ledger, items)
            for (_, future), crossings in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(crossings)

    async def _write_one_by_one(self, count: int) -> None:
        batch = self._pending[:count]
        del self._pending[:count]
        for item, future in batch:
            try:
                [crossings] = await settle_many(self._factory, [item], audit=self._audit)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                await _settle_ledger(self._ledger, [item])
                if not future.done():
                    future.set_result(crossings)

    async def drain(self) -> None:
        """Wait until everything queued is written (shutdown; reads that must see this
        instance's calls, e.g. budget reads)."""
        self._hurry.set()
        try:
            while self._writer is not None and not self._writer.done():
                await asyncio.shield(self._writer)
        finally:
            self._hurry.clear()


SETTLEMENTS_KEY = "budget_settlements"


async def flush_settlements(state: AppState) -> None:
    """Wait for the settlements this instance has queued, so a read that follows sees the
    calls this instance answered (spend, usage and audit rows are written behind the
    responses)."""
    queue = state.extras.get(SETTLEMENTS_KEY)
    if isinstance(queue, SettlementQueue):
        await queue.drain()


def _usage_values(
    subject: AuthSubject, api_key_id: uuid.UUID | None, cost: int, usage: UsageData, now: datetime
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "created_at": now,
        "user_id": subject.user_id,
        "api_key_id": api_key_id,
        "request_id": usage.request_id,
        "endpoint": usage.endpoint,
        "model": usage.model,
        "provider": usage.provider,
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
        "cost_nanousd": cost,
        "latency_ms": usage.latency_ms,
        "status": usage.status,
        "error_code": usage.error_code,
        "streamed": usage.streamed,
    }


def _audit_values(
    subject: AuthSubject, api_key_id: uuid.UUID | None, cost: int, usage: UsageData, now: datetime
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "created_at": now,
        "user_id": subject.user_id,
        "api_key_id": api_key_id,
        "action": f"llm.{usage.endpoint}",
        "resource_type": "model",
        "resource_id": usage.model[:64],
        "details": {
            "provider": usage.provider,
            "status": usage.status,
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "cost_nanousd": cost,
            "streamed": usage.streamed,
        },
        "success": usage.status in ("success", "cached"),
        "request_id": usage.request_id or request_id_var.get(),
    }


async def _check_thresholds(conn: AsyncConnection, rows: Sequence[Any]) -> list[ThresholdCrossing]:
    crossings = []
    for budget in rows:
        if budget.limit_nanousd <= 0 or not budget.soft_thresholds:
            continue
        percent_used = budget.spent_nanousd * 100 / budget.limit_nanousd
        passed = [t for t in sorted(budget.soft_thresholds) if t <= percent_used]
        if passed and passed[-1] > budget.notified_threshold:
            # Conditional, so two instances settling together notify once.
            result = await conn.execute(
                update(Budget)
                .where(Budget.id == budget.id, Budget.notified_threshold < passed[-1])
                .values(notified_threshold=passed[-1])
            )
            if result.rowcount:
                crossings.append(
                    ThresholdCrossing(
                        budget_id=budget.id,
                        threshold_percent=passed[-1],
                        spent_nanousd=budget.spent_nanousd,
                        limit_nanousd=budget.limit_nanousd,
                        user_id=budget.user_id,
                        api_key_id=budget.api_key_id,
                    )
                )
    return crossings


# The single place where threshold crossings leave the budget domain. Events and webhooks
# register a listener here; until then crossings are logged.
threshold_listeners: list[Callable[[ThresholdCrossing], None]] = []


def report_crossings(crossings: list[ThresholdCrossing]) -> None:
    """Announce ``budget.threshold_exceeded`` for each crossing (log + listeners)."""
    for crossing in crossings:
        logger.warning(
            "budget threshold exceeded",
            extra={
                "event": "budget.threshold_exceeded",
                "budget_id": str(crossing.budget_id),
                "threshold_percent": crossing.threshold_percent,
                "spent_nanousd": crossing.spent_nanousd,
                "limit_nanousd": crossing.limit_nanousd,
            },
        )
        for listener in threshold_listeners:
            try:
                listener(crossing)
            except Exception:
                logger.exception("threshold listener failed")


# -- managing budgets (internal API) ---------------------------------------------------------


async def read_budgets(
    state: AppState, budgets: Sequence[Budget], *, created: bool = False
) -> list[dict[str, Any]]:
    """Budgets as the API shows them: spent from the database (0 once its period ended),
    reserved from the ledger (0 where no call has loaded it; not read for budgets just
    ``created``, which nothing can have reserved on yet)."""
    from enclava.llm.pricing import usd

    starts = current_period_starts()
    counters = [counter_name(b.id, b.period, starts[b.period]) for b in budgets]
    ledger = get_ledger(state)
    reserved = [0] * len(budgets) if created else await ledger.reserved(counters)
    result = []
    for budget, held in zip(budgets, reserved, strict=True):
        start = starts[budget.period]
        current = budget.period_started_at.timestamp() >= start
        spent = budget.spent_nanousd if current else 0
        remaining = max(0, budget.limit_nanousd - spent - held)
        result.append(
            {
                "id": budget.id,
                "name": budget.name,
                "user_id": budget.user_id,
                "api_key_id": budget.api_key_id,
                "period": budget.period,
                "limit_usd": usd(budget.limit_nanousd),
                "spent_usd": usd(spent),
                "reserved_usd": usd(held),
                "remaining_usd": usd(remaining),
                "soft_thresholds": list(budget.soft_thresholds or []),
                "is_active": budget.is_active,
                "period_started_at": (
                    budget.period_started_at if current else datetime.fromtimestamp(start, UTC)
                ),
                "created_at": budget.created_at,
            }
        )
    return result


async def invalidate_owner(
    state: AppState, *, user_id: uuid.UUID | None = None, api_key_id: uuid.UUID | None = None
) -> None:
    """Make every instance sharing the ledger reload this owner's budgets on its next call.
    Call after the change is committed."""
    if api_key_id is not None:
        owner: Owner = ("key", api_key_id)
    elif user_id is not None:
        owner = ("user", user_id)
    else:
        raise ValueError("a budget owner is a user or an API key")
    try:
        await get_ledger(state).invalidate_owner(owner)
    except AppError:
        # The change is committed; instances use the old definitions until they expire
        # (ledger.DEFINITIONS_TTL_S). Reservations fail closed while the store is down.
        logger.error("budget ledger invalidation failed", extra={"owner": owner[0]})


def _nanousd(amount: Any) -> int:
    """USD (number or decimal string) to nano-dollars, exactly, or a 400."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation:
        raise BadRequestError(
            "The budget limit must be a number of USD", param="limit_usd"
        ) from None
    nanos = value * NANOUSD_PER_USD if value.is_finite() else value
    if not value.is_finite() or value < 0 or nanos != nanos.to_integral_value():
        raise BadRequestError(
            "The budget limit must be a non-negative amount of USD with at most 9 decimals",
            param="limit_usd",
        )
    return int(nanos)


async def create_budget(
    session: AsyncSession,
    *,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    name: str,
    limit_usd: Decimal | str | int | float,
    period: str,
    soft_thresholds: list[int] | None = None,
    is_active: bool = True,
    created_by_id: uuid.UUID | None = None,
) -> Budget:
    """Add a hard budget of ``limit_usd`` per ``period`` for a user or an API key (no
    authorisation: the CLI and ``add_budget`` decide who may).

    The amount is converted to nano-dollars exactly (through ``Decimal``); amounts finer than
    a nano-dollar are refused rather than rounded.
    """
    if (user_id is None) == (api_key_id is None):
        raise BadRequestError("A budget belongs to exactly one user or one API key")
    if period not in PERIODS:
        raise BadRequestError(
            f"Unknown budget period {period!r}; use one of {', '.join(PERIODS)}", param="period"
        )
    budget = Budget(
        user_id=user_id,
        api_key_id=api_key_id,
        name=name,
        period=period,
        limit_nanousd=_nanousd(limit_usd),
        spent_nanousd=0,
        period_started_at=period_start(period, utcnow()),
        soft_thresholds=sorted(set(soft_thresholds or [])),
        notified_threshold=0,
        is_active=is_active,
        created_by_id=created_by_id,
    )
    session.add(budget)
    await session.flush()
    return budget


async def add_budget(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    name: str,
    limit_usd: Any,
    period: str = "monthly",
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    soft_thresholds: list[int] | None = None,
    is_active: bool = True,
) -> Budget:
    """Create a budget on the internal API. Users may budget themselves and their own keys
    (neither owner given: the caller); administrators anyone. Audited."""
    from enclava.audit.service import record

    if user_id is not None and api_key_id is not None:
        raise BadRequestError("Give user_id or api_key_id, not both", param="api_key_id")
    if api_key_id is not None:
        key = await repository.get_key(session, api_key_id)
        if key is None or (key.user_id != subject.user_id and not subject.is_admin):
            raise NotFoundError("API key not found", param="api_key_id")
    else:
        user_id = user_id or subject.user_id
        if user_id != subject.user_id and not subject.is_admin:
            raise NotFoundError("User not found", param="user_id")
    budget = await create_budget(
        session,
        user_id=user_id,
        api_key_id=api_key_id,
        name=name,
        limit_usd=limit_usd,
        period=period,
        soft_thresholds=soft_thresholds,
        is_active=is_active,
        created_by_id=subject.user_id,
    )
    record(
        session,
        action="budget.create",
        subject=subject,
        resource_type="budget",
        resource_id=budget.id,
        details={"limit_nanousd": budget.limit_nanousd, "period": period},
    )
    return budget


async def get_budget(session: AsyncSession, subject: AuthSubject, budget_id: uuid.UUID) -> Budget:

    budget = await repository.get_budget(session, subject, budget_id)
    if budget is None:
        raise NotFoundError("Budget not found")
    return budget


def _check_may_change(subject: AuthSubject, budget: Budget) -> None:
    if not subject.is_admin and budget.created_by_id != subject.user_id:
        raise PermissionDeniedError(
            "This budget was set by an administrator", code="budget_managed_by_admin"
        )


async def update_budget(
    session: AsyncSession, subject: AuthSubject, budget_id: uuid.UUID, changes: dict[str, Any]
) -> Budget:
    from enclava.audit.service import record

    budget = await get_budget(session, subject, budget_id)
    _check_may_change(subject, budget)
    values: dict[str, Any] = {}
    for name in ("name", "soft_thresholds", "is_active"):
        if changes.get(name) is not None:
            values[name] = changes[name]
    if changes.get("limit_usd") is not None:
        values["limit_nanousd"] = _nanousd(changes["limit_usd"])
    if changes.get("period") is not None and changes["period"] != budget.period:
        # A new period kind starts a new period: spent goes back to zero.
        values.update(
            period=changes["period"],
            period_started_at=period_start(changes["period"], utcnow()),
            spent_nanousd=0,
            notified_threshold=0,
        )
    if "soft_thresholds" in values:
        values["notified_threshold"] = 0
    if values:
        # Columnwise UPDATE: concurrent settlements keep changing spent.
        await session.execute(
            update(Budget)
            .where(Budget.id == budget.id)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        await session.refresh(budget)
    record(
        session,
        action="budget.update",
        subject=subject,
        resource_type="budget",
        resource_id=budget.id,
        details={"fields": sorted(values)},
    )
    return budget


async def delete_budget(
    session: AsyncSession, subject: AuthSubject, budget_id: uuid.UUID
) -> Budget:
    """Delete a budget; returns it (for its owner, to invalidate after the commit)."""
    from sqlalchemy import delete

    from enclava.audit.service import record

    budget = await get_budget(session, subject, budget_id)
    _check_may_change(subject, budget)
    await session.execute(delete(Budget).where(Budget.id == budget.id))
    record(
        session,
        action="budget.delete",
        subject=subject,
        resource_type="budget",
        resource_id=budget_id,
    )
    return budget
