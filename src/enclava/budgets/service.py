"""Budgets: reserve the worst case before an LLM call, settle to the real cost after.

``reserve`` is one atomic conditional ``UPDATE`` over every active budget that applies to the
caller (the key's and its owner's): it adds the amount to ``reserved`` only where
``spent + reserved + amount <= limit`` holds, and succeeds only if it held for all of them.
PostgreSQL's row locks (and SQLite's single writer) make concurrent reservations serialise on
the budget rows, so no interleaving of requests on any number of instances can overspend.
``settle`` moves the reservation to ``spent`` at the real cost and writes the usage row in the
same transaction. Money is integer nano-dollars. If the database cannot be reached the call is
refused (fail closed). See docs/decisions/0002-money-and-budgets.md.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from collections.abc import Callable

from sqlalchemy import insert, or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.budgets.periods import PERIODS, period_start
from enclava.db import SessionFactory, transaction
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


async def _roll_periods(session: AsyncSession, budgets: list[Any]) -> None:
    """Start a new period (spent back to 0) for budgets whose period has ended."""
    now = utcnow()
    for budget in budgets:
        start = period_start(budget.period, now)
        if budget.period_started_at < start:
            await session.execute(
                update(Budget)
                .where(Budget.id == budget.id, Budget.period_started_at < start)
                .values(spent_nanousd=0, notified_threshold=0, period_started_at=start)
                .execution_options(synchronize_session=False)
            )


async def reserve(
    factory: SessionFactory, subject: AuthSubject, amount_nanousd: int
) -> Reservation:
    """Hold ``amount_nanousd`` on every budget that applies, or raise ``QuotaExceededError``."""
    if amount_nanousd < 0:
        raise ValueError("reservation amount must not be negative")
    try:
        async with transaction(factory) as session:
            budgets = list(
                (
                    await session.execute(
                        select(Budget.id, Budget.period, Budget.period_started_at).where(
                            Budget.is_active.is_(True), _owner_filter(subject)
                        )
                    )
                ).all()
            )
            if not budgets:
                return Reservation((), amount_nanousd)
            await _roll_periods(session, budgets)
            ids = tuple(b.id for b in budgets)
            result = await session.execute(
                update(Budget)
                .where(
                    Budget.id.in_(ids),
                    Budget.spent_nanousd + Budget.reserved_nanousd + amount_nanousd
                    <= Budget.limit_nanousd,
                )
                .values(reserved_nanousd=Budget.reserved_nanousd + amount_nanousd)
                .execution_options(synchronize_session=False)
            )
            if result.rowcount != len(ids):  # type: ignore[attr-defined]
                raise QuotaExceededError(
                    "Budget exhausted: this request could cost more than the remaining budget",
                    code="insufficient_quota",
                )
            return Reservation(ids, amount_nanousd)
    except (OperationalError, DBAPIError, OSError) as exc:
        logger.error("budget store unreachable", extra={"error": type(exc).__name__})
        raise ServiceUnavailableError(
            "Budget store unavailable; request refused", code="budget_store_unavailable"
        ) from exc


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
    async with transaction(factory) as session:
        crossings: list[ThresholdCrossing] = []
        if reservation.budget_ids:
            rows = (
                await session.execute(
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
                    .execution_options(synchronize_session=False)
                )
            ).all()
            crossings = await _check_thresholds(session, rows)
        await session.execute(
            insert(UsageRecord).values(
                user_id=subject.user_id,
                api_key_id=api_key_id,
                request_id=usage.request_id,
                endpoint=usage.endpoint,
                model=usage.model,
                provider=usage.provider,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                total_tokens=usage.prompt_tokens + usage.completion_tokens,
                cost_nanousd=cost_nanousd,
                latency_ms=usage.latency_ms,
                status=usage.status,
                error_code=usage.error_code,
                streamed=usage.streamed,
            )
        )
        if audit:
            await session.execute(
                insert(AuditLog).values(
                    user_id=subject.user_id,
                    api_key_id=api_key_id,
                    action=f"llm.{usage.endpoint}",
                    resource_type="model",
                    resource_id=usage.model[:64],
                    details={
                        "provider": usage.provider,
                        "status": usage.status,
                        "prompt_tokens": usage.prompt_tokens,
                        "completion_tokens": usage.completion_tokens,
                        "cost_nanousd": cost_nanousd,
                        "streamed": usage.streamed,
                    },
                    success=usage.status in ("success", "cached"),
                    request_id=usage.request_id or request_id_var.get(),
                )
            )
        return crossings


async def _check_thresholds(session: AsyncSession, rows: list[Any]) -> list[ThresholdCrossing]:
    crossings = []
    for budget in rows:
        if budget.limit_nanousd <= 0 or not budget.soft_thresholds:
            continue
        percent_used = budget.spent_nanousd * 100 / budget.limit_nanousd
        passed = [t for t in sorted(budget.soft_thresholds) if t <= percent_used]
        if passed and passed[-1] > budget.notified_threshold:
            # Conditional, so two instances settling together notify once.
            result = await session.execute(
                update(Budget)
                .where(Budget.id == budget.id, Budget.notified_threshold < passed[-1])
                .values(notified_threshold=passed[-1])
                .execution_options(synchronize_session=False)
            )
            if result.rowcount:  # type: ignore[attr-defined]
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
    from enclava.audit.service import record
    from sqlalchemy import delete

    budget = await get_budget(session, subject, budget_id)
    _check_may_change(subject, budget)
    await session.execute(delete(Budget).where(Budget.id == budget.id))
    record(session, action="budget.delete", subject=subject, resource_type="budget", resource_id=budget_id)
