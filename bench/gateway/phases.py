"""Where a gateway call's time goes at concurrency 1: ``python -m bench.gateway.phases``.

Serves Enclava in this process (uvicorn on loopback, mock upstream in a subprocess), wraps the
phases of the metered path with timers and sends sequential requests. Backend: embedded by
default, ``BENCH_PHASES_BACKEND=postgres`` for PostgreSQL + Redis.
"""

from __future__ import annotations

import asyncio
import functools
import os
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from bench.gateway.run import (
    _enclava_env,
    _flush_redis,
    _mock_upstream,
    _port,
    _process,
    _provision,
    _reset_postgres,
    _wait_http,
)

TIMINGS: dict[str, list[float]] = defaultdict(list)
# Phases that run behind the response (not part of what the client waits for).
OFF_PATH = "(behind the response) "


def _timed(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            TIMINGS[name].append(time.perf_counter() - started)

    return wrapper


def _instrument() -> None:
    from enclava.api_keys import lookup
    from enclava.auth import dependencies
    from enclava.budgets import service as budgets
    from enclava.llm import gateway
    from enclava.llm.providers.http import HttpProvider
    from enclava.ratelimit import service as ratelimit

    dependencies.lookup.authenticate = _timed(  # type: ignore[attr-defined]
        "auth: API key (cache; DB on a miss)", lookup.authenticate
    )
    # On Redis the LLM routes take the key from the instance's copy of its cache entry, which
    # admission confirms in its round trip.
    dependencies.lookup.authenticate_unconfirmed = _timed(  # type: ignore[attr-defined]
        "auth: API key from the instance's copy (Redis)", lookup.authenticate_unconfirmed
    )
    # Embedded the dependency counts the request; on Redis the gateway's admission counts it
    # in the same round trip as the reservation (enclava.llm.admission), so there is no
    # separate rate-limit phase.
    dependencies.ratelimit.enforce = _timed("rate limit: count the request", ratelimit.enforce)  # type: ignore[attr-defined]
    gateway._reserve = _timed(
        "admission: reserve (with the rate-limit count on Redis)", gateway._reserve
    )
    HttpProvider.chat = _timed("provider: upstream HTTP call", HttpProvider.chat)  # type: ignore[method-assign]
    budgets.settle_many = _timed(
        OFF_PATH + "settlement: one database write per batch", budgets.settle_many
    )


def main() -> None:
    backend = os.environ.get("BENCH_PHASES_BACKEND", "embedded")
    # Sequential requests: the first count when BENCH_REQUESTS gives one per level.
    total = int(os.environ.get("BENCH_REQUESTS", "1000").split(",")[0])
    work = Path(tempfile.mkdtemp(prefix="enclava-phases-"))
    upstream_port = _port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    with _process(_mock_upstream(upstream_port), {}, work / "mock.log"):
        _wait_http(upstream + "/v1/models")
        database = redis_url = None
        if backend == "postgres":
            database = _reset_postgres(
                os.environ.get(
                    "BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
                ),
                "enclava_bench",
            )
            redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
            _flush_redis(redis_url)
        env = _enclava_env(work, upstream, database, redis_url)
        key = _provision(env)
        os.environ.update(env)
        _instrument()
        from enclava.app import create_app
        from enclava.config import Settings
        from enclava.testing.server import serve_in_thread

        with serve_in_thread(create_app(Settings())) as url:
            asyncio.run(_drive(url + "/api/v1/chat/completions", key, total))
    _report(total)


async def _drive(url: str, key: str, total: int) -> None:
    body = {
        "model": "bench-model",
        "messages": [{"role": "user", "content": "Say something short."}],
        "max_tokens": 16,
    }
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        for index in range(total + 100):
            if index == 100:
                TIMINGS.clear()
            started = time.perf_counter()
            async with session.post(url, json=body, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            TIMINGS["client: whole request"].append(time.perf_counter() - started)


def _report(total: int) -> None:
    whole = statistics.median(TIMINGS["client: whole request"]) * 1000
    print(f"median of {total} sequential requests, ms")
    accounted = 0.0
    for name, values in TIMINGS.items():
        median = statistics.median(values) * 1000
        if name != "client: whole request" and not name.startswith(OFF_PATH):
            accounted += median
        print(f"  {name:45s} {median:7.3f}")
    print(f"  {'rest (HTTP server, routing, JSON, client)':45s} {whole - accounted:7.3f}")


if __name__ == "__main__":
    main()
