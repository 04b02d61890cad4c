"""Gateway overhead: Enclava vs. calling the mock upstream directly vs. LiteLLM's proxy.

Each target runs in its own process (``enclava mock-upstream``, ``enclava serve``, ``litellm``,
and ``floor``: the least any Python gateway does, see ``bench.gateway.floor``);
the load generator is an asyncio + aiohttp client in this process, measuring what a client sees.
Enclava runs with a budget on the key (reserve + settle per call), usage rows, audit rows and
whatever rate limiting the auth dependencies apply, on the embedded defaults (SQLite,
in-process cache) and on PostgreSQL + Redis.

    make bench                       # everything
    BENCH_TARGETS=direct,embedded python -m bench.gateway
    BENCH_REQUESTS=2000 BENCH_UPSTREAM_LATENCY_MS=0 ...

Environment: ``BENCH_TARGETS`` (direct,floor,embedded,postgres,litellm), ``BENCH_REQUESTS`` per
measurement (default 2000), ``BENCH_ROUNDS`` (default 1: every target in turn, that many times;
the table gives medians over the rounds and a second table their spread), ``BENCH_PG_ADMIN_URL`` (postgresql://postgres@127.0.0.1:5432/postgres),
``BENCH_REDIS_URL`` (redis://127.0.0.1:6379/13), ``BENCH_LITELLM`` (path to the ``litellm``
executable; default ``bench/.litellm-venv/bin/litellm``, see docs/benchmarks.md for the install).
Results go to stdout and ``bench/results/gateway.json``.
"""

from __future__ import annotations

from bench.gateway.run import main

__all__ = ["main"]
