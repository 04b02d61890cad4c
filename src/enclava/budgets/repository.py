"""SQL for budgets: every query for owned rows goes through ``visible_to``."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Uuid,
    and_,
    bindparam,
    case,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.budgets.periods import PERIODS, period_start
from enclava.models import ApiKey, AuditLog, Budget, UsageRecord
from enclava.models.base import UTCDateTime


def visible_to(subject: AuthSubject) -> Any:
    """Admins see every budget; a user sees their own and those of their keys."""
    if subject.is_admin:
        return true()
    own_keys = select(ApiKey.id).where(ApiKey.user_id == subject.user_id)
    return or_(Budget.user_id == subject.user_id, Budget.api_key_id.in_(own_keys))


async def list_budgets(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[Budget]:
    query = select(Budget).where(visible_to(subject))
    if user_id is not None:
        query = query.where(Budget.user_id == user_id)
    if api_key_id is not None:
        query = query.where(Budget.api_key_id == api_key_id)
    query = query.order_by(Budget.created_at, Budget.id).offset(offset).limit(limit)
    return list((await session.execute(query)).scalars())


async def get_budget(
    session: AsyncSession, subject: AuthSubject, budget_id: uuid.UUID
) -> Budget | None:
    query = select(Budget).where(Budget.id == budget_id, visible_to(subject))
    return (await session.execute(query)).scalar_one_or_none()


async def get_key(session: AsyncSession, key_id: uuid.UUID) -> ApiKey | None:
    return await session.get(ApiKey, key_id)


# -- the metered hot path ----------------------------------------------------------------------
# Statements are built once with bind parameters and reused, so SQLAlchemy neither rebuilds
# them nor recomputes their cache keys on every LLM call.

_RESERVE_COLUMNS = (
    Budget.id,
    Budget.period,
    Budget.period_started_at,
    Budget.spent_nanousd,
    Budget.reserved_nanousd,
    Budget.limit_nanousd,
)
CHARGE_COLUMNS = (
    Budget.id,
    Budget.spent_nanousd,
    Budget.limit_nanousd,
    Budget.soft_thresholds,
    Budget.notified_threshold,
    Budget.user_id,
    Budget.api_key_id,
)


def _owner(with_key: bool) -> Any:
    clause = Budget.user_id == bindparam("owner_user_id")
    if with_key:
        clause = or_(clause, Budget.api_key_id == bindparam("owner_api_key_id"))
    return and_(Budget.is_active.is_(True), clause)


def owner_params(user_id: uuid.UUID, api_key_id: uuid.UUID | None) -> dict[str, Any]:
    params: dict[str, Any] = {"owner_user_id": user_id}
    if api_key_id is not None:
        params["owner_api_key_id"] = api_key_id
    return params


def period_params(now: datetime) -> dict[str, Any]:
    return {f"start_{p}": period_start(p, now) for p in PERIODS}


def _current_period_start() -> Any:
    return case(
        *(
            (Budget.period == p, bindparam(f"start_{p}", type_=UTCDateTime()))
            for p in PERIODS
            if p != "total"
        ),
        else_=bindparam("start_total", type_=UTCDateTime()),
    )


@cache
def reserve_in_one_statement(with_key: bool) -> Any:
    """PostgreSQL: lock the applicable budgets, check them all, add ``amount`` to all.

    Returns one row ``(ok, n, ids)``: ``ok`` is false when any budget would go over its limit
    or has a period to roll over (nothing was changed then)."""
    amount = bindparam("amount", type_=BigInteger())
    candidates = (
        select(
            Budget.id,
            Budget.spent_nanousd,
            Budget.reserved_nanousd,
            Budget.limit_nanousd,
            (Budget.period_started_at >= _current_period_start()).label("current"),
        )
        .where(_owner(with_key))
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
    return select(fits.c.ok, fits.c.n, select(func.array_agg(reserved.c.id)).scalar_subquery())


@cache
def add_reservation(with_key: bool) -> Any:
    """Add ``amount`` to every applicable budget; returns the new totals to check."""
    return (
        update(Budget)
        .where(_owner(with_key))
        .values(reserved_nanousd=Budget.reserved_nanousd + bindparam("amount", type_=BigInteger()))
        .returning(*_RESERVE_COLUMNS)
    )


@cache
def release_reservation() -> Any:
    return (
        update(Budget)
        .where(Budget.id.in_(bindparam("budget_ids", expanding=True)))
        .values(reserved_nanousd=Budget.reserved_nanousd - bindparam("amount", type_=BigInteger()))
    )


@cache
def roll_period() -> Any:
    return (
        update(Budget)
        .where(Budget.id == bindparam("budget_id"))
        .values(
            spent_nanousd=0,
            notified_threshold=0,
            period_started_at=bindparam("start", type_=UTCDateTime()),
        )
    )


def insert_rows(kind: str) -> Any:
    """A multi-row insert of usage or audit rows (executed with a list of dicts)."""
    return insert(UsageRecord if kind == "usage" else AuditLog)


@cache
def charge_one() -> Any:
    """SQLite (no ``UPDATE ... FROM (VALUES ...)`` with column aliases): one budget's charge."""
    return (
        update(Budget)
        .where(Budget.id == bindparam("budget_id"))
        .values(
            reserved_nanousd=Budget.reserved_nanousd - bindparam("released", type_=BigInteger()),
            spent_nanousd=Budget.spent_nanousd + bindparam("cost", type_=BigInteger()),
        )
        .returning(*CHARGE_COLUMNS)
    )


def _unnest(table: Any, prefix: str, names: tuple[str, ...]) -> Any:
    """``unnest(:a::T[], :b::U[], ...) AS rows(a, b, ...)``: one parameter per column holding
    every row's value, so the SQL text is the same for any number of rows (prepared once)."""
    arrays = [bindparam(f"{prefix}{n}", type_=ARRAY(table.__table__.c[n].type)) for n in names]
    return func.unnest(*arrays).table_valued(*names).render_derived(name=f"{prefix}rows")


USAGE_COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "api_key_id",
    "request_id",
    "endpoint",
    "model",
    "provider",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "cost_nanousd",
    "latency_ms",
    "status",
    "error_code",
    "streamed",
)
AUDIT_COLUMNS = (
    "id",
    "created_at",
    "user_id",
    "api_key_id",
    "action",
    "resource_type",
    "resource_id",
    "details",
    "success",
    "request_id",
)


def _insert_unnested(table: Any, prefix: str, names: tuple[str, ...]) -> Any:
    rows = _unnest(table, prefix, names)
    return insert(table).from_select(list(names), select(*(rows.c[n] for n in names)))


@cache
def settle_batch_in_one_statement(with_charges: bool, with_audit: bool) -> Any:
    """PostgreSQL: charge the budgets and insert the usage (and audit) rows of any number of
    calls in one statement (array parameters, see ``batch_params``); returns the charged
    budgets' rows."""
    inserts = [
        _insert_unnested(UsageRecord, "u_", USAGE_COLUMNS)
        .returning(UsageRecord.id)
        .cte("usage_rows")
    ]
    if with_audit:
        inserts.append(
            _insert_unnested(AuditLog, "a_", AUDIT_COLUMNS).returning(AuditLog.id).cte("audit_rows")
        )
    if not with_charges:
        return select(inserts[0].c.id).add_cte(*inserts[1:])
    charges = (
        func.unnest(
            bindparam("charge_ids", type_=ARRAY(Uuid())),
            bindparam("charge_released", type_=ARRAY(BigInteger())),
            bindparam("charge_cost", type_=ARRAY(BigInteger())),
        )
        .table_valued("budget_id", "released", "cost")
        .render_derived(name="charges")
    )
    charged = (
        update(Budget)
        .where(Budget.id == charges.c.budget_id)
        .values(
            reserved_nanousd=Budget.reserved_nanousd - charges.c.released,
            spent_nanousd=Budget.spent_nanousd + charges.c.cost,
        )
        .returning(*CHARGE_COLUMNS)
        .cte("charged")
    )
    return select(charged).add_cte(*inserts)


def batch_params(
    usage_rows: list[dict[str, Any]],
    audit_rows: list[dict[str, Any]],
    charges: dict[uuid.UUID, list[int]],
) -> dict[str, Any]:
    params: dict[str, Any] = {f"u_{n}": [row[n] for row in usage_rows] for n in USAGE_COLUMNS}
    if audit_rows:
        params.update({f"a_{n}": [row[n] for row in audit_rows] for n in AUDIT_COLUMNS})
    if charges:
        params["charge_ids"] = list(charges)
        params["charge_released"] = [released for released, _ in charges.values()]
        params["charge_cost"] = [cost for _, cost in charges.values()]
    return params
