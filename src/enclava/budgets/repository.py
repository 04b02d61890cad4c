"""SQL for budgets: every query for owned rows goes through ``visible_to``."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import cache
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    String,
    Uuid,
    bindparam,
    case,
    func,
    insert,
    literal_column,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
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
# them nor recomputes their cache keys on every LLM call. Reservations live in the budget
# ledger (budgets/ledger.py); the database holds definitions and settled spend.

CHARGE_COLUMNS = (
    Budget.id,
    Budget.spent_nanousd,
    Budget.limit_nanousd,
    Budget.soft_thresholds,
    Budget.notified_threshold,
    Budget.user_id,
    Budget.api_key_id,
)


@cache
def owner_budgets(with_key: bool) -> Any:
    """The active budgets of a user (and of one of their keys), to load the ledger from."""
    owner = Budget.user_id == bindparam("owner_user_id")
    if with_key:
        owner = or_(owner, Budget.api_key_id == bindparam("owner_api_key_id"))
    return select(
        Budget.id,
        Budget.user_id,
        Budget.api_key_id,
        Budget.period,
        Budget.limit_nanousd,
        Budget.spent_nanousd,
        Budget.period_started_at,
    ).where(Budget.is_active.is_(True), owner)


def owner_params(user_id: uuid.UUID, api_key_id: uuid.UUID | None) -> dict[str, Any]:
    params: dict[str, Any] = {"owner_user_id": user_id}
    if api_key_id is not None:
        params["owner_api_key_id"] = api_key_id
    return params


def _charged_values(start: Any, cost: Any) -> dict[str, Any]:
    """Add ``cost`` to ``spent``; if the row is still in an earlier period than ``start`` (the
    period the call was reserved in), that period ended: start the new one with ``cost``.
    (SET expressions all see the row as it was before the update.)"""
    ended = Budget.period_started_at < start
    return {
        "spent_nanousd": case((ended, cost), else_=Budget.spent_nanousd + cost),
        "notified_threshold": case((ended, 0), else_=Budget.notified_threshold),
        "period_started_at": case((ended, start), else_=Budget.period_started_at),
    }


def _table_of(kind: str) -> tuple[Any, tuple[str, ...]]:
    return (UsageRecord, USAGE_COLUMNS) if kind == "usage" else (AuditLog, AUDIT_COLUMNS)


@cache
def insert_json_rows(kind: str) -> Any:
    """SQLite: insert any number of usage or audit rows given as one JSON parameter ``rows``
    (``json_rows``), ``INSERT ... SELECT ... FROM json_each(:rows)``: one statement and one
    step whatever the batch's size, and the same SQL for every size (compiled once).

    An ``executemany`` binds the rows one by one on aiosqlite's thread, which takes the GIL
    back from the event loop for every row; a multi-row ``VALUES`` list has new SQL for every
    batch size, and compiling it cost more than the write. With one step per table, a batch
    costs the same handful of round trips to the driver's thread at any size, so the
    settlement queue can take large batches under load (docs/benchmarks.md)."""
    table, names = _table_of(kind)
    rows = func.json_each(bindparam("rows", type_=String())).table_valued("value")
    fields = (
        func.json_extract(rows.c.value, literal_column(f"'$[{index}]'"))
        for index in range(len(names))
    )
    return insert(table).from_select(list(names), select(*fields).select_from(rows))


@cache
def _bind_processors(dialect: Dialect, kind: str) -> tuple[tuple[str, Any], ...]:
    table, names = _table_of(kind)
    columns = table.__table__.c
    return tuple(
        (name, columns[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in names
    )


def json_rows(dialect: Dialect, kind: str, rows: list[dict[str, Any]]) -> str:
    """The ``rows`` parameter of ``insert_json_rows``: each row's values as the database stores
    them (the columns' own bind processing: UUIDs, datetimes, JSON), in column order."""
    processors = _bind_processors(dialect, kind)
    return orjson.dumps(
        [
            [row[name] if process is None else process(row[name]) for name, process in processors]
            for row in rows
        ]
    ).decode()


@cache
def charge_one() -> Any:
    """SQLite (no ``UPDATE ... FROM (VALUES ...)`` with column aliases): one budget's charge.
    Only a budget still of the period kind the call was reserved under is charged."""
    return (
        update(Budget)
        .where(Budget.id == bindparam("budget_id"), Budget.period == bindparam("charge_period"))
        .values(
            **_charged_values(
                bindparam("start", type_=UTCDateTime()), bindparam("cost", type_=BigInteger())
            )
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
            bindparam("charge_periods", type_=ARRAY(String())),
            bindparam("charge_starts", type_=ARRAY(UTCDateTime())),
            bindparam("charge_cost", type_=ARRAY(BigInteger())),
        )
        .table_valued("budget_id", "period", "start", "cost")
        .render_derived(name="charges")
    )
    charged = (
        update(Budget)
        .where(Budget.id == charges.c.budget_id, Budget.period == charges.c.period)
        .values(**_charged_values(charges.c.start, charges.c.cost))
        .returning(*CHARGE_COLUMNS)
        .cte("charged")
    )
    return select(charged).add_cte(*inserts)


def batch_params(
    usage_rows: list[dict[str, Any]],
    audit_rows: list[dict[str, Any]],
    charges: dict[tuple[uuid.UUID, str], tuple[datetime, int]],
) -> dict[str, Any]:
    params: dict[str, Any] = {f"u_{n}": [row[n] for row in usage_rows] for n in USAGE_COLUMNS}
    if audit_rows:
        params.update({f"a_{n}": [row[n] for row in audit_rows] for n in AUDIT_COLUMNS})
    if charges:
        params["charge_ids"] = [budget_id for budget_id, _ in charges]
        params["charge_periods"] = [period for _, period in charges]
        params["charge_starts"] = [start for start, _ in charges.values()]
        params["charge_cost"] = [cost for _, cost in charges.values()]
    return params
