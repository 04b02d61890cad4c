"""Exact money under concurrency: a budget that fits exactly K requests admits exactly K.

``exact-model`` bills output only and the mock answers with exactly ``max_tokens`` tokens, so
each call really costs its worst case (50 tokens x 2 USD / M = 100,000 nano-dollars) and K is
the same for every interleaving.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from enclava.app import create_app
from enclava.config import Settings
from enclava.testing.mock_upstream import Simulator
from tests.conftest import Actors
from tests.llm.conftest import key_for
from tests.llm.helpers import add_budget, budget, second_instance, usage_cost_sum, usage_rows

REQUEST = {"model": "exact-model", "messages": [{"role": "user", "content": "count"}]}
COST = 50 * 2000
K = 37
LIMIT = K * COST + COST - 1  # one nano-dollar short of K + 1


async def _fire(clients: list[httpx.AsyncClient], headers: dict[str, str], total: int) -> list[int]:
    async def one(index: int) -> int:
        client = clients[index % len(clients)]
        stream = index % 3 == 0
        body = {**REQUEST, "stream": True} if stream else REQUEST
        response = await client.post("/api/v1/chat/completions", json=body, headers=headers)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "insufficient_quota"
        return response.status_code

    return await asyncio.gather(*(one(i) for i in range(total)))


async def _check(app: Any, budget_id: Any, statuses: list[int]) -> None:
    assert sorted(set(statuses)) == [200, 429], statuses
    assert statuses.count(200) == K
    ledger = await budget(app, budget_id)
    assert ledger.spent_nanousd == K * COST <= ledger.limit_nanousd
    assert ledger.reserved_nanousd == 0
    rows = await usage_rows(app)
    assert len(rows) == K and all(r.status == "success" and r.cost_nanousd == COST for r in rows)
    assert await usage_cost_sum(app) == ledger.spent_nanousd


async def test_200_concurrent_requests_never_overspend(
    app: Any, client: httpx.AsyncClient, actors: Actors, mock_upstream: Simulator
) -> None:
    mock_upstream.config.completion_tokens = 1000  # capped by max_tokens: exactly 50
    key = await key_for(actors)
    budget_id = await add_budget(app, key, LIMIT, key=True)
    statuses = await _fire([client], key["headers"], 200)
    await _check(app, budget_id, statuses)


async def test_two_instances_share_one_budget(
    app: Any,
    settings: Settings,
    client: httpx.AsyncClient,
    actors: Actors,
    mock_upstream: Simulator,
    tmp_path: Path,
) -> None:
    mock_upstream.config.completion_tokens = 1000
    key = await key_for(actors)
    budget_id = await add_budget(app, key["owner"], LIMIT)
    second = create_app(second_instance(settings, tmp_path))
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url="http://second") as other:
            statuses = await _fire([client, other], key["headers"], 200)
    await _check(app, budget_id, statuses)
