"""Helpers for LLM tests: SSE parsing and reading budgets and usage rows."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import func, select

from enclava.db import transaction
from enclava.models import Budget, UsageRecord


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body: dicts, or the string ``[DONE]``."""
    events: list[Any] = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            events.append(data if data == "[DONE]" else orjson.loads(data))
    return events


async def settled(app: Any) -> None:
    """Wait for the settlements the app writes behind its responses."""
    from enclava.llm.registry import get_runtime

    await get_runtime(app.state.enclava).flush()


async def usage_rows(app: Any) -> list[UsageRecord]:
    await settled(app)
    async with transaction(app.state.enclava.session_factory) as session:
        return list(
            (await session.execute(select(UsageRecord).order_by(UsageRecord.created_at))).scalars()
        )


@dataclass(frozen=True)
class BudgetState:
    """A budget as it stands: its database row (limit, settled spend) and what the ledger
    holds reserved on its current period."""

    row: Budget
    reserved_nanousd: int

    @property
    def spent_nanousd(self) -> int:
        return self.row.spent_nanousd

    @property
    def limit_nanousd(self) -> int:
        return self.row.limit_nanousd


async def reserved_in_ledger(app: Any, row: Budget) -> int:
    from enclava.budgets.ledger import counter_name, get_ledger
    from enclava.budgets.service import current_period_starts

    start = current_period_starts()[row.period]
    [reserved] = await get_ledger(app.state.enclava).reserved(
        [counter_name(row.id, row.period, start)]
    )
    return reserved


async def budget(app: Any, budget_id: uuid.UUID) -> BudgetState:
    await settled(app)
    async with transaction(app.state.enclava.session_factory) as session:
        row = await session.get(Budget, budget_id)
        assert row is not None
    return BudgetState(row, await reserved_in_ledger(app, row))


async def usage_cost_sum(app: Any) -> int:
    await settled(app)
    async with transaction(app.state.enclava.session_factory) as session:
        return int(
            await session.scalar(select(func.coalesce(func.sum(UsageRecord.cost_nanousd), 0))) or 0
        )


async def add_budget(
    app: Any,
    subject_or_owner: dict[str, Any],
    limit_nanousd: int,
    *,
    key: bool = False,
    **fields: Any,
) -> uuid.UUID:
    from enclava.budgets.periods import period_start
    from enclava.budgets.service import invalidate_owner
    from enclava.kit.time import utcnow

    async with transaction(app.state.enclava.session_factory) as session:
        row = Budget(
            name="test",
            user_id=None if key else subject_or_owner["id"],
            api_key_id=subject_or_owner["id"] if key else None,
            period=fields.pop("period", "monthly"),
            limit_nanousd=limit_nanousd,
            spent_nanousd=0,
            period_started_at=period_start("monthly", utcnow()),
            **fields,
        )
        session.add(row)
        await session.flush()
        budget_id = row.id
    # As every writer of budgets does after its commit (the owner may have made calls already).
    owner_id = subject_or_owner["id"]
    if key:
        await invalidate_owner(app.state.enclava, api_key_id=owner_id)
    else:
        await invalidate_owner(app.state.enclava, user_id=owner_id)
    return budget_id


from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import httpx  # noqa: E402


@asynccontextmanager
async def app_with_providers(
    settings: Any, providers_yaml: str | None, tmp_path: Path
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """A separate app whose providers come from ``providers_yaml`` (None: nothing configured)."""
    from enclava.app import create_app

    path = None
    if providers_yaml is not None:
        path = tmp_path / "custom-providers.yaml"
        path.write_text(providers_yaml)
    app = create_app(settings.model_copy(update={"providers_file": path, "privatemode_url": None}))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield app, client


def second_instance(settings: Any, tmp_path: Path) -> Any:
    """Settings for another app instance on the same database with a data dir (vector store)
    of its own, as a second machine would have."""
    from enclava.config import Settings

    other = tmp_path / "second-instance"
    other.mkdir(exist_ok=True)
    values = {**settings.model_dump(), "data_dir": other}
    values["database_url"] = settings.resolved_database_url
    return Settings(_env_file=None, **values)
