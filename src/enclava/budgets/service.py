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

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, func, insert, literal, or_, select, true, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from enclava.auth.subject import AuthSubject
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
from enclava.models import AuditLog, Budget, UsageRecord
from enclava.models.base import UTCDateTime

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


def _owner_filter(subject: AuthSubject) -> Any:
    clauses = [Budget.user_id == subject.user_id]
    if subject.api_key is not None:
        clauses.append(Budget.api_key_id == subject.api_key.id)
    return or_(*clauses)


class _Rollback(Exception):
    """Leaves a reservation transaction without committing it."""


def _engine(factory: SessionFactory) -> AsyncEngine:
    engine = factory.kw.get("bind")
    assert isinstance(engine, AsyncEngine), "the session factory must be bound to an engine"
    return engine


async def reserve(
    factory: SessionFactory, subject: AuthSubject, amount_nanousd: int
) -> Reservation:
    """Hold ``amount_nanousd`` on every budget that applies, or raise ``QuotaExceededError``.

    On PostgreSQL the common case is one auto-committed statement (``_reserve_pg``), so budget
    rows stay locked only while the statement runs, not across the event loop's scheduling
    gaps between statements; refusals and period rollovers take the transactional path below.
    """
    if amount_nanousd < 0:
        raise ValueError("reservation amount must not be negative")
    engine = _engine(factory)
    if engine.dialect.name == "postgresql":
        try:
            fast = await _reserve_pg(engine, subject, amount_nanousd)
        except (OperationalError, DBAPIError, OSError) as exc:
            logger.error("budget store unreachable", extra={"error": type(exc).__name__})
            raise ServiceUnavailableError(
                "Budget store unavailable; request refused", code="budget_store_unavailable"
            ) from exc
        if fast is not None:
            return fast
    return await _reserve_in_transaction(engine, subject, amount_nanousd)


def _current_period_start(now: datetime) -> Any:
    starts = {p: period_start(p, now) for p in PERIODS}
    return case(
        *((Budget.period == p, literal(starts[p], UTCDateTime())) for p in PERIODS if p != "total"),
        else_=literal(starts["total"], UTCDateTime()),
    )


async def _reserve_pg(engine: AsyncEngine, subject: AuthSubject, amount: int) -> Reservation | None:
    """Lock the applicable budgets, check them all, add the amount to all: one statement.

    Returns ``None`` when the transactional path must decide (a refusal, or a period to roll).
    """
    candidates = (
        select(
            Budget.id,
            Budget.spent_nanousd,
            Budget.reserved_nanousd,
            Budget.limit_nanousd,
            (Budget.period_started_at >= _current_period_start(utcnow())).label("current"),
        )
        .where(Budget.is_active.is_(True), _owner_filter(subject))
        .with_for_update()
        .cte("candidates")
    )
    fits = (
        select(
            func.coalesce(
                func.bool_and(
                    and_(
                        candidates.c.spent_nanousd + candidates.c.reserved_nanousd + amount
                        <= candidates.c.limit_nanousd,
                        candidates.c.current,
                    )
                ),
                true(),
            ).label("ok"),
            func.count().label("n"),
        )
        .select_from(candidates)
        .cte("fits")
    )
    reserved = (
        update(Budget)
        .where(Budget.id.in_(select(candidates.c.id)), select(fits.c.ok).scalar_subquery())
        .values(reserved_nanousd=Budget.reserved_nanousd + amount)
        .returning(Budget.id)
        .cte("reserved")
    )
    statement = select(fits.c.ok, fits.c.n, select(func.array_agg(reserved.c.id)).scalar_subquery())
    async with engine.connect() as conn:
        conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        row = (await conn.execute(statement)).one()
    if not row[0]:
        return None
    return Reservation(tuple(row[2] or ()), amount)


async def _reserve_in_transaction(
    engine: AsyncEngine, subject: AuthSubject, amount_nanousd: int
) -> Reservation:
    """One statement: add the amount to every applicable budget and return the new totals; if any
    budget would then be over its limit, roll the transaction back. The UPDATE holds the rows'
    locks until commit or rollback (PostgreSQL; SQLite has a single writer), so concurrent
    reservations see each other's amounts and no interleaving can overspend.
    """
    refused = False
    try:
        async with engine.connect() as conn:
            try:
                async with conn.begin():
                    rows = (
                        await conn.execute(
                            update(Budget)
                            .where(Budget.is_active.is_(True), _owner_filter(subject))
                            .values(reserved_nanousd=Budget.reserved_nanousd + amount_nanousd)
                            .returning(
                                Budget.id,
                                Budget.period,
                                Budget.period_started_at,
                                Budget.spent_nanousd,
                                Budget.reserved_nanousd,
                                Budget.limit_nanousd,
                            )
                        )
                    ).all()
                    if not rows:
                        return Reservation((), amount_nanousd)
                    now = utcnow()
                    for row in rows:
                        spent = row.spent_nanousd
                        start = period_start(row.period, now)
                        if row.period_started_at < start:
                            # The period ended: start a new one (in-flight reservations carry over).
                            await conn.execute(
                                update(Budget)
                                .where(Budget.id == row.id)
                                .values(
                                    spent_nanousd=0, notified_threshold=0, period_started_at=start
                                )
                            )
                            spent = 0
                        if spent + row.reserved_nanousd > row.limit_nanousd:
                            refused = True
                    if refused:
                        raise _Rollback()
                    return Reservation(tuple(r.id for r in rows), amount_nanousd)
            except _Rollback:
                pass
    except (OperationalError, DBAPIError, OSError) as exc:
        logger.error("budget store unreachable", extra={"error": type(exc).__name__})
        raise ServiceUnavailableError(
            "Budget store unavailable; request refused", code="budget_store_unavailable"
        ) from exc
    raise QuotaExceededError(
        "Budget exhausted: this request could cost more than the remaining budget",
        code="insufficient_quota",
    )


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
    if cost_nanousd < 0:
        raise ValueError("cost must not be negative")
    api_key_id = subject.api_key.id if subject.api_key else None
    rows = _usage_rows(subject, api_key_id, cost_nanousd, usage, audit)
    engine = _engine(factory)
    charge = (
        update(Budget)
        .where(Budget.id.in_(reservation.budget_ids))
        .values(
            reserved_nanousd=Budget.reserved_nanousd - reservation.amount_nanousd,
            spent_nanousd=Budget.spent_nanousd + cost_nanousd,
        )
        .returning(
            Budget.id,
            Budget.spent_nanousd,
            Budget.limit_nanousd,
            Budget.soft_thresholds,
            Budget.notified_threshold,
            Budget.user_id,
            Budget.api_key_id,
        )
    )
    if engine.dialect.name == "postgresql":
        # One auto-committed statement: the budget rows are locked only while it runs.
        inserts = [
            insert(table).values(**values).returning(table.id).cte(f"row_{i}")
            for i, (table, values) in enumerate(rows)
        ]
        if reservation.budget_ids:
            settled = charge.cte("settled")
            statement = select(settled).add_cte(*inserts)
        else:
            statement = select(inserts[0].c.id).add_cte(*inserts[1:])
        async with engine.connect() as conn:
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            result = (await conn.execute(statement)).all()
            if not reservation.budget_ids:
                return []
            return await _check_thresholds(conn, result)
    async with engine.begin() as conn:
        for table, values in rows:
            await conn.execute(insert(table).values(**values))
        if not reservation.budget_ids:
            return []
        # Last, so SQLite's write lock is held for as little as possible after it.
        result = (await conn.execute(charge)).all()
        return await _check_thresholds(conn, result)


def _usage_rows(
    subject: AuthSubject, api_key_id: uuid.UUID | None, cost: int, usage: UsageData, audit: bool
) -> list[tuple[Any, dict[str, Any]]]:
    now = utcnow()
    rows: list[tuple[Any, dict[str, Any]]] = [
        (
            UsageRecord,
            {
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
            },
        )
    ]
    if audit:
        rows.append(
            (
                AuditLog,
                {
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
                },
            )
        )
    return rows


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
    from enclava.llm.pricing import to_nanousd

    try:
        return to_nanousd(amount)
    except ValueError:
        raise BadRequestError("amounts have at most nine decimals", param="limit_usd") from None


async def create_budget(
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
    """Create a budget for a user or an API key. Users may budget themselves and their own
    keys; administrators anyone."""
    from enclava.audit.service import record
    from enclava.budgets import repository

    if period not in PERIODS:
        raise BadRequestError(f"Unknown period {period!r}", param="period")
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
    budget = Budget(
        name=name,
        user_id=user_id,
        api_key_id=api_key_id,
        period=period,
        limit_nanousd=_nanousd(limit_usd),
        spent_nanousd=0,
        reserved_nanousd=0,
        period_started_at=period_start(period, utcnow()),
        soft_thresholds=sorted(set(soft_thresholds or [])),
        notified_threshold=0,
        is_active=is_active,
        created_by_id=subject.user_id,
    )
    session.add(budget)
    await session.flush()
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
    from enclava.budgets import repository

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
