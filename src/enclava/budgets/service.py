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

from sqlalchemy import or_, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.budgets.periods import period_start
from enclava.db import SessionFactory, transaction
from enclava.errors import QuotaExceededError, ServiceUnavailableError
from enclava.kit.time import utcnow
from enclava.models import Budget, UsageRecord
from enclava.usage import repository as usage_repository

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


async def _roll_periods(session: AsyncSession, budgets: list[Budget]) -> None:
    """Start a new period (spent back to 0) for budgets whose period has ended."""
    now = utcnow()
    for budget in budgets:
        start = period_start(budget.period, now)
        if budget.period_started_at < start:
            await session.execute(
                update(Budget)
                .where(Budget.id == budget.id, Budget.period_started_at < start)
                .values(spent_nanousd=0, notified_threshold=0, period_started_at=start)
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
                        select(Budget).where(Budget.is_active.is_(True), _owner_filter(subject))
                    )
                ).scalars()
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
) -> list[ThresholdCrossing]:
    """Release the reservation, charge the real cost and write the usage row, atomically."""
    async with transaction(factory) as session:
        crossings: list[ThresholdCrossing] = []
        if reservation.budget_ids:
            await session.execute(
                update(Budget)
                .where(Budget.id.in_(reservation.budget_ids))
                .values(
                    reserved_nanousd=Budget.reserved_nanousd - reservation.amount_nanousd,
                    spent_nanousd=Budget.spent_nanousd + cost_nanousd,
                )
                .execution_options(synchronize_session=False)
            )
            crossings = await _check_thresholds(session, reservation.budget_ids)
        usage_repository.add(
            session,
            UsageRecord(
                user_id=subject.user_id,
                api_key_id=subject.api_key.id if subject.api_key else None,
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
            ),
        )
        return crossings


async def _check_thresholds(
    session: AsyncSession, budget_ids: tuple[uuid.UUID, ...]
) -> list[ThresholdCrossing]:
    crossings = []
    rows = (await session.execute(select(Budget).where(Budget.id.in_(budget_ids)))).scalars()
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


# create_budget was appended by the identity work; its imports sit here so the header stays as is.
from decimal import Decimal, InvalidOperation  # noqa: E402

from enclava.budgets.periods import PERIODS  # noqa: E402
from enclava.errors import BadRequestError  # noqa: E402


async def create_budget(
    session: AsyncSession,
    *,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    name: str,
    limit_usd: Decimal | str | int | float,
    period: str,
) -> Budget:
    """Add a hard budget of ``limit_usd`` per ``period`` for a user or an API key.

    The amount is converted to nano-dollars exactly (through ``Decimal``); amounts finer than
    a nano-dollar are refused rather than rounded.
    """
    if (user_id is None) == (api_key_id is None):
        raise BadRequestError("A budget belongs to exactly one user or one API key")
    if period not in PERIODS:
        raise BadRequestError(
            f"Unknown budget period {period!r}; use one of {', '.join(PERIODS)}", param="period"
        )
    try:
        amount = Decimal(str(limit_usd))
    except InvalidOperation:
        raise BadRequestError("The budget limit must be a number of USD", param="limit_usd")
    nanousd = amount * NANOUSD_PER_USD
    if not amount.is_finite() or amount < 0 or nanousd != nanousd.to_integral_value():
        raise BadRequestError(
            "The budget limit must be a non-negative amount of USD with at most 9 decimals",
            param="limit_usd",
        )
    budget = Budget(
        user_id=user_id,
        api_key_id=api_key_id,
        name=name,
        period=period,
        limit_nanousd=int(nanousd),
        spent_nanousd=0,
        reserved_nanousd=0,
        period_started_at=period_start(period, utcnow()),
    )
    session.add(budget)
    await session.flush()
    return budget
