"""Budgets: reserve the worst case before an LLM call, settle to the real cost after.

``reserve`` is one ``UPDATE ... RETURNING`` over every active budget that applies to the caller
(the key's and its owner's): it adds the amount to ``reserved`` and commits only if every
budget still has ``spent + reserved <= limit``, else rolls back. PostgreSQL's row locks (and
SQLite's single writer) make concurrent reservations serialise on the budget rows, so no
interleaving of requests on any number of instances can overspend.
``settle`` moves the reservation to ``spent`` at the real cost and writes the usage row in the
same transaction. Money is integer nano-dollars. If the database cannot be reached the call is
refused (fail closed). See docs/decisions/0002-money-and-budgets.md.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.budgets import repository
from enclava.budgets.periods import PERIODS, period_start
from enclava.db import SessionFactory
from enclava.errors import (
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    ServiceUnavailableError,
)
from enclava.kit.logging import request_id_var
from enclava.kit.time import utcnow
from enclava.models import Budget

logger = logging.getLogger(__name__)

NANOUSD_PER_USD = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one call; ``budget_ids`` is empty when no budget applies."""

    budget_ids: tuple[uuid.UUID, ...]
    amount_nanousd: int


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


def _unavailable(exc: Exception) -> ServiceUnavailableError:
    logger.error("budget store unreachable", extra={"error": type(exc).__name__})
    return ServiceUnavailableError(
        "Budget store unavailable; request refused", code="budget_store_unavailable"
    )


async def reserve(
    factory: SessionFactory,
    subject: AuthSubject,
    amount_nanousd: int,
    *,
    session: AsyncSession | None = None,
) -> Reservation:
    """Hold ``amount_nanousd`` on every budget that applies, or raise ``QuotaExceededError``.

    With ``session`` the reservation joins that session's transaction (the caller commits it
    right away: the budget rows stay locked until then); without, it commits on its own. On
    PostgreSQL the common case is one statement, so the rows are locked only while it runs;
    refusals and period rollovers take the general path (``_reserve_checked``).
    """
    if amount_nanousd < 0:
        raise ValueError("reservation amount must not be negative")
    engine = _engine(factory)
    api_key_id = subject.api_key.id if subject.api_key else None
    with_key = api_key_id is not None
    params = {**repository.owner_params(subject.user_id, api_key_id), "amount": amount_nanousd}
    postgres = engine.dialect.name == "postgresql"
    reservation: Reservation | None = None
    try:
        if session is not None:
            conn = await session.connection()
            if postgres:
                reservation = await _reserve_in_one_statement(conn, with_key, params)
            if reservation is None:
                reservation = await _reserve_checked(conn, with_key, params)
        else:
            if postgres:
                async with engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    reservation = await _reserve_in_one_statement(conn, with_key, params)
            if reservation is None:
                async with engine.begin() as conn:
                    reservation = await _reserve_checked(conn, with_key, params)
    except (OperationalError, DBAPIError, OSError) as exc:
        raise _unavailable(exc) from exc
    if reservation is _REFUSED:
        raise QuotaExceededError(
            "Budget exhausted: this request could cost more than the remaining budget",
            code="insufficient_quota",
        )
    return reservation


_REFUSED = Reservation((), 0)


async def _reserve_in_one_statement(
    conn: AsyncConnection, with_key: bool, params: dict[str, Any]
) -> Reservation | None:
    """PostgreSQL: ``None`` unless every budget fits and none has a period to roll over."""
    statement = repository.reserve_in_one_statement(with_key)
    ok, _, ids = (
        await conn.execute(statement, {**params, **repository.period_params(utcnow())})
    ).one()
    return Reservation(tuple(ids or ()), params["amount"]) if ok else None


async def _reserve_checked(
    conn: AsyncConnection, with_key: bool, params: dict[str, Any]
) -> Reservation:
    """Add the amount to every applicable budget, rolling over ended periods, and take it back
    if any budget is then over its limit (``_REFUSED``). The rows stay locked by the update
    until the transaction ends, so the check and the correction are atomic with it."""
    amount = params["amount"]
    rows = (await conn.execute(repository.add_reservation(with_key), params)).all()
    now = utcnow()
    refused = False
    for row in rows:
        spent = row.spent_nanousd
        start = period_start(row.period, now)
        if row.period_started_at < start:
            # The period ended: start a new one (in-flight reservations carry over).
            await conn.execute(repository.roll_period(), {"budget_id": row.id, "start": start})
            spent = 0
        refused = refused or spent + row.reserved_nanousd > row.limit_nanousd
    ids = tuple(r.id for r in rows)
    if refused:
        await conn.execute(
            repository.release_reservation(), {"budget_ids": list(ids), "amount": amount}
        )
        return _REFUSED
    return Reservation(ids, amount)


@dataclass(slots=True)
class Settlement:
    """One call to settle: who pays, what was reserved, what it really cost, what it used."""

    subject: AuthSubject
    reservation: Reservation
    cost_nanousd: int
    usage: UsageData


async def settle(
    factory: SessionFactory,
    subject: AuthSubject,
    reservation: Reservation,
    cost_nanousd: int,
    usage: UsageData,
    *,
    audit: bool = False,
) -> list[ThresholdCrossing]:
    """Release the reservation, charge the real cost and write the usage row (and, with
    ``audit``, an audit row for the call), atomically."""
    [crossings] = await settle_many(
        factory, [Settlement(subject, reservation, cost_nanousd, usage)], audit=audit
    )
    return crossings


async def settle_many(
    factory: SessionFactory, items: Sequence[Settlement], *, audit: bool = False
) -> list[list[ThresholdCrossing]]:
    """Settle several calls in one atomic write (group commit): all usage rows (and audit
    rows) in one multi-row insert each, and one update per budget with the sums of what the
    calls reserved and cost. Returns each call's threshold crossings (a crossing is reported
    to the first call that charged its budget)."""
    if any(item.cost_nanousd < 0 for item in items):
        raise ValueError("cost must not be negative")
    now = utcnow()
    usage_rows = []
    audit_rows = []
    charges: dict[uuid.UUID, list[int]] = {}
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
        for budget_id in item.reservation.budget_ids:
            released_and_cost = charges.setdefault(budget_id, [0, 0])
            released_and_cost[0] += item.reservation.amount_nanousd
            released_and_cost[1] += item.cost_nanousd
            first_charger.setdefault(budget_id, index)
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
            await conn.execute(repository.insert_rows("usage"), usage_rows)
            if audit_rows:
                await conn.execute(repository.insert_rows("audit"), audit_rows)
            if charges:
                # Last, so the budget rows are held for as little as possible after it.
                rows = []
                for budget_id, (released, cost) in charges.items():
                    params = {"budget_id": budget_id, "released": released, "cost": cost}
                    rows.extend((await conn.execute(repository.charge_one(), params)).all())
                crossings = await _check_thresholds(conn, rows)
    result: list[list[ThresholdCrossing]] = [[] for _ in items]
    for crossing in crossings:
        result[first_charger[crossing.budget_id]].append(crossing)
    return result


class SettlementQueue:
    """Group commit for settlements: calls that settle while a write is in flight are
    written together by the next one, so under load the cost of a settlement is shared.
    A lone call is written at once. Each caller gets its own result or exception."""

    def __init__(self, factory: SessionFactory, *, audit: bool, max_batch: int = 200) -> None:
        self._factory = factory
        self._audit = audit
        self._max_batch = max_batch
        self._pending: list[tuple[Settlement, asyncio.Future[list[ThresholdCrossing]]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def settle(self, item: Settlement) -> list[ThresholdCrossing]:
        future: asyncio.Future[list[ThresholdCrossing]] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())
        return await asyncio.shield(future)

    async def _write(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                results = await settle_many(
                    self._factory, [item for item, _ in batch], audit=self._audit
                )
            except Exception as exc:
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(exc)
                    continue
                # One bad settlement must not take the others down with it: write each alone.
                self._pending[:0] = [(item, future) for item, future in batch]
                await self._write_one_by_one(len(batch))
                continue
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
                if not future.done():
                    future.set_result(crossings)

    async def drain(self) -> None:
        """Wait until everything queued is written (shutdown)."""
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)


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


def to_read(budget: Budget) -> dict[str, Any]:
    from enclava.llm.pricing import usd

    remaining = max(0, budget.limit_nanousd - budget.spent_nanousd - budget.reserved_nanousd)
    return {
        "id": budget.id,
        "name": budget.name,
        "user_id": budget.user_id,
        "api_key_id": budget.api_key_id,
        "period": budget.period,
        "limit_usd": usd(budget.limit_nanousd),
        "spent_usd": usd(budget.spent_nanousd),
        "reserved_usd": usd(budget.reserved_nanousd),
        "remaining_usd": usd(remaining),
        "soft_thresholds": list(budget.soft_thresholds or []),
        "is_active": budget.is_active,
        "period_started_at": budget.period_started_at,
        "created_at": budget.created_at,
    }


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
        reserved_nanousd=0,
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
        # Columnwise UPDATE: concurrent reservations keep changing spent/reserved.
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


async def delete_budget(session: AsyncSession, subject: AuthSubject, budget_id: uuid.UUID) -> None:
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
