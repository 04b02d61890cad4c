"""``enclava keys create`` and the budget it can attach."""

from __future__ import annotations

import asyncio
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner, Result

from enclava.budgets.service import create_budget
from enclava.cli import app as cli
from enclava.config import Settings
from enclava.db import transaction
from enclava.errors import BadRequestError
from enclava.models import ApiKey, AuditLog, Budget
from tests.auth.probe import public_probe
from tests.conftest import Actors, StartApp, cli_env

runner = CliRunner()


def _create_user(settings: Settings, email: str = "ops@example.com") -> None:
    result = runner.invoke(
        cli,
        ["users", "create", "--email", email, "--password", "long enough pw"],
        env=cli_env(settings),
    )
    assert result.exit_code == 0, result.output


async def _invoke(settings: Settings, args: list[str]) -> Result:
    """Run the CLI from an async test: it starts its own event loop, so in a thread."""
    return await asyncio.to_thread(runner.invoke, cli, args, env=cli_env(settings))


async def test_keys_create_prints_a_working_key(settings: Settings, make_app: StartApp) -> None:
    await asyncio.to_thread(_create_user, settings)
    result = await _invoke(
        settings, ["keys", "create", "--user", "ops@example.com", "--name", "ci"]
    )
    assert result.exit_code == 0, result.output
    key = result.stdout.strip()
    assert key.startswith("ek_") and "\n" not in key

    app, client = await make_app(public_probe)
    response = await client.get("/api/v1/_probe/chat", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200
    assert response.json()["scopes"] == ["llm.chat", "llm.embeddings", "llm.models"]
    async with transaction(app.state.enclava.session_factory) as session:
        row = (
            await session.execute(select(AuditLog).where(AuditLog.action == "api_key.create"))
        ).scalar_one()
    assert row.details["via"] == "cli" and key not in json.dumps(row.details)


async def test_keys_create_with_every_option(settings: Settings, make_app: StartApp) -> None:
    await asyncio.to_thread(_create_user, settings)
    result = await _invoke(
        settings,
        [
            "keys",
            "create",
            "--user",
            "OPS@example.com",
            "--name",
            "bot",
            "--tier",
            "premium",
            "--scopes",
            "llm.chat, rag.read",
            "--models",
            "m1,m2",
            "--confidential-only",
            "--budget",
            "12.5",
            "--period",
            "monthly",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["key"].startswith("ek_")
    assert created["scopes"] == ["llm.chat", "rag.read"]
    assert created["tier"] == "premium" and created["confidential_only"] is True
    assert created["allowed_models"] == ["m1", "m2"]

    app, _ = await make_app()
    async with transaction(app.state.enclava.session_factory) as session:
        key = await session.get(ApiKey, uuid.UUID(created["id"]))
        budget = (await session.execute(select(Budget))).scalar_one()
    assert key is not None and key.tier == "premium"
    assert budget.api_key_id == key.id and budget.user_id is None
    assert budget.limit_nanousd == 12_500_000_000 and budget.period == "monthly"
    assert created["budget"]["id"] == str(budget.id)


REFUSED = [
    (["--user", "ghost@example.com", "--name", "x"], "no user"),
    (["--user", "ops@example.com", "--name", "x", "--tier", "gold"], "Unknown tier"),
    (["--user", "ops@example.com", "--name", "x", "--scopes", "root"], "Unknown scopes"),
    (["--user", "ops@example.com", "--name", "x", "--budget", "5"], "go together"),
    (
        ["--user", "ops@example.com", "--name", "x", "--budget", "5", "--period", "hourly"],
        "Unknown budget period",
    ),
    (
        ["--user", "ops@example.com", "--name", "x", "--budget", "lots", "--period", "daily"],
        "number of USD",
    ),
    (["--user", "ops@example.com", "--name", " "], "needs a name"),
]


def test_keys_create_refuses_bad_input(settings: Settings) -> None:
    _create_user(settings)
    for args, message in REFUSED:
        result = runner.invoke(cli, ["keys", "create", *args], env=cli_env(settings))
        assert result.exit_code != 0, args
        assert message in result.output, args
        assert "ek_" not in result.stdout


async def test_create_budget_is_exact(app: Any, actors: Actors) -> None:
    user = await actors.user()
    for amount, nanousd in (
        ("0.1", 100_000_000),
        (Decimal("2.000000001"), 2_000_000_001),
        (3, 3_000_000_000),
        ("0", 0),
    ):
        async with transaction(app.state.enclava.session_factory) as session:
            budget = await create_budget(
                session, user_id=user["id"], name="b", limit_usd=amount, period="total"
            )
        assert budget.limit_nanousd == nanousd and budget.spent_nanousd == 0


async def test_create_budget_refuses(app: Any, actors: Actors) -> None:
    user = await actors.user()
    key = await actors.api_key(user)
    for kwargs in (
        {"limit_usd": "0.0000000001", "period": "daily"},
        {"limit_usd": "-1", "period": "daily"},
        {"limit_usd": "NaN", "period": "daily"},
        {"limit_usd": "1", "period": "yearly"},
        {"limit_usd": "1", "period": "daily", "api_key_id": key["id"]},
        {"limit_usd": "1", "period": "daily", "user_id": None},
    ):
        arguments: dict[str, Any] = {"user_id": user["id"], "name": "b", **kwargs}
        with pytest.raises(BadRequestError):
            async with transaction(app.state.enclava.session_factory) as session:
                await create_budget(session, **arguments)
