"""The gateway benchmark (see the package docstring)."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CONCURRENCIES = (1, 16, 64)
# Requests timed at each concurrency level.
Counts = dict[int, int]
BODY = {
    "model": "bench-model",
    "messages": [{"role": "user", "content": "Say something short."}],
    "max_tokens": 16,
}


def _counts(spec: str) -> Counts:
    """``BENCH_REQUESTS``: one count for every level, or one per level (``1000,4000,8000``
    for c=1, 16 and 64), so the high-concurrency levels can run long enough to settle the
    noise without making the c=1 level take minutes against a slow upstream."""
    values = [int(part) for part in spec.split(",")]
    if len(values) == 1:
        values *= len(CONCURRENCIES)
    if len(values) != len(CONCURRENCIES) or min(values) < 1:
        raise SystemExit(f"BENCH_REQUESTS: one count or {len(CONCURRENCIES)}, got {spec!r}")
    return dict(zip(CONCURRENCIES, values, strict=True))


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not come up")


@contextmanager
def _process(args: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- load generation ---------------------------------------------------------------------------


async def _measure(
    url: str, headers: dict[str, str], concurrency: int, total: int
) -> dict[str, Any]:
    payload = json.dumps(BODY).encode()
    connector = aiohttp.TCPConnector(limit=concurrency)
    latencies: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(
        connector=connector, headers={**headers, "content-type": "application/json"}
    ) as session:

        async def call() -> None:
            nonlocal errors
            started = time.perf_counter()
            async with session.post(url, data=payload) as response:
                await response.read()
                if response.status != 200:
                    errors += 1
                    return
            latencies.append(time.perf_counter() - started)

        remaining = min(200, total)

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await call()

        # Warm up pools and caches at the level's concurrency, so that every connection the
        # level uses is open before it is timed (else its first requests all pay for one).
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        latencies.clear()
        errors = 0
        remaining = total
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return (
            round(latencies[min(len(latencies) - 1, int(len(latencies) * p))] * 1000, 3)
            if latencies
            else float("nan")
        )

    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_all(url: str, headers: dict[str, str], total: Counts, pid: int) -> list[dict[str, Any]]:
    """Each concurrency level, plus the server's CPU time per request: unlike latency and
    throughput, that figure barely moves when other work shares the machine."""
    rows = []
    for concurrency in CONCURRENCIES:
        before = _cpu_seconds(pid)
        requests = total[concurrency]
        row = asyncio.run(_measure(url, headers, concurrency, requests))
        spent = _cpu_seconds(pid) - before
        row["server_cpu_ms_per_request"] = round(
            spent * 1000 / (row["requests"] + min(200, requests)), 3
        )
        rows.append(row)
    return rows


# -- targets ---------------------------------------------------------------------------------


def _mock_upstream(port: int, latency_ms: str = "0", jitter_ms: str = "0") -> list[str]:
    """The command of the mock upstream every target calls (16 completion tokens a call)."""
    return [
        str(VENV_BIN / "enclava"),
        "mock-upstream",
        "--port",
        str(port),
        "--latency-ms",
        latency_ms,
        "--latency-jitter-ms",
        jitter_ms,
        "--completion-tokens",
        "16",
    ]


def _providers_file(work: Path, upstream: str) -> Path:
    path = work / "providers.yaml"
    path.write_text(
        "providers:\n"
        "  - name: mock\n    type: openai\n"
        f"    base_url: {upstream}/v1\n    api_key: bench\n"
        "models:\n"
        "  - id: bench-model\n    provider: mock\n    upstream_model: mock-chat\n"
        "    input_price_per_million: 0.5\n    output_price_per_million: 1.5\n"
    )
    return path


def _enclava_env(
    work: Path, upstream: str, database_url: str | None, redis_url: str | None
) -> dict[str, str]:
    env = {
        "ENCLAVA_DATA_DIR": str(work / "data"),
        "ENCLAVA_PROVIDERS_FILE": str(_providers_file(work, upstream)),
        "ENCLAVA_LOG_LEVEL": "WARNING",
        "ENCLAVA_SECRET_KEY": "bench-secret-key-0123456789-0123456789-0123456789",
        "ENCLAVA_ENCRYPTION_KEY": "bench-encryption-key-0123456789-0123456789-01234",
    }
    if database_url:
        env["ENCLAVA_DATABASE_URL"] = database_url
        # Enough pooled connections for the highest concurrency: connections above the pool
        # size are opened and closed per checkout, which costs more than the queries.
        env["ENCLAVA_DB_POOL_SIZE"] = "40"
    if redis_url:
        env["ENCLAVA_REDIS_URL"] = redis_url
    return env


def _provision(env: dict[str, str]) -> str:
    """Migrate, create a user, an API key and a budget on the key; return the key."""
    script = (
        "import asyncio\n"
        "from enclava.config import Settings\n"
        "from enclava.migrations import runner\n"
        "from enclava.cli import run_with_session\n"
        "from enclava.auth import service as auth\n"
        "from enclava.api_keys import service as keys\n"
        "from enclava.auth.subject import AuthSubject\n"
        "from enclava.budgets import service as budgets\n"
        "s = Settings()\n"
        "runner.upgrade(s)\n"
        "async def work(session):\n"
        "    user = await auth.create_user(session, email='bench@example.com', password='bench-password-1', role='admin')\n"
        "    row, key = await keys.create_key(session, s.secret_key_value, user, name='bench')\n"
        "    # Rate limiting stays on; the key's own limits are set high enough for the run.\n"
        "    row.rate_limit_per_minute = 10_000_000\n"
        "    row.rate_limit_per_hour = 100_000_000\n"
        "    await budgets.create_budget(session, name='bench', limit_usd=1000000, period='total', api_key_id=row.id)\n"
        "    return key\n"
        "print(run_with_session(s, work))\n"
    )
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-c", script],
        env={**os.environ, **env},
        capture_output=True,
        check=True,
    )
    return result.stdout.decode().strip().splitlines()[-1]


def _bench_enclava(
    name: str,
    work: Path,
    upstream: str,
    total: Counts,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    env = _enclava_env(work, upstream, database_url, redis_url)
    key = _provision(env)
    port = _port()
    args = [str(VENV_BIN / "enclava"), "serve", "--port", str(port)]
    with _process(args, env, work / f"{name}.log") as proc:
        _wait_http(f"http://127.0.0.1:{port}/health")
        return _run_all(
            f"http://127.0.0.1:{port}/api/v1/chat/completions",
            {"authorization": f"Bearer {key}"},
            total,
            proc.pid,
        )


def _reset_postgres(admin_url: str, name: str) -> str:
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(run())
    base, _, _ = admin_url.rpartition("/")
    return f"{base}/{name}"


def _flush_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def _bench_litellm(
    executable: str, work: Path, upstream: str, total: Counts
) -> list[dict[str, Any]]:
    work.mkdir(parents=True, exist_ok=True)
    config = work / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        "    litellm_params:\n"
        "      model: openai/mock-chat\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: bench\n"
        "litellm_settings:\n  telemetry: false\n"
    )
    port = _port()
    env = {
        "LITELLM_MASTER_KEY": "sk-bench-master",
        "LITELLM_LOG": "ERROR",
        "DISABLE_SCHEMA_UPDATE": "true",
    }
    args = [executable, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    headers = {"authorization": "Bearer sk-bench-master"}
    with _process(args, env, work / "litellm.log") as proc:
        _wait_http(f"http://127.0.0.1:{port}/health/liveliness", timeout=180)
        return _run_all(f"http://127.0.0.1:{port}/v1/chat/completions", headers, total, proc.pid)


def _bench_floor(work: Path, upstream: str, total: Counts) -> list[dict[str, Any]]:
    """The bare Python proxy of ``bench.gateway.floor`` (same server stack as Enclava)."""
    work.mkdir(parents=True, exist_ok=True)
    port = _port()
    args = [
        str(VENV_BIN / "uvicorn"),
        "bench.gateway.floor:app",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    env = {"ENCLAVA_FLOOR_UPSTREAM": upstream, "PYTHONPATH": str(ROOT)}
    with _process(args, env, work / "floor.log") as proc:
        _wait_for_port(port)
        return _run_all(f"http://127.0.0.1:{port}/v1/chat/completions", {}, total, proc.pid)


def _wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open")


def _install_litellm(notes: list[str]) -> None:
    """LiteLLM goes into its own venv under bench/, never into the project's."""
    venv = ROOT / "bench/.litellm-venv"
    print(
        f"installing litellm[proxy] into {venv} (once; BENCH_LITELLM_INSTALL=0 skips) ...",
        flush=True,
    )
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin/pip"), "install", "--quiet", "litellm[proxy]"],
            check=True,
            timeout=1800,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        notes.append(f"LiteLLM could not be installed: {exc}")


# -- report ------------------------------------------------------------------------------------


def _table(results: dict[str, list[dict[str, Any]]]) -> str:
    direct = {r["concurrency"]: r for r in results.get("direct", [])}
    litellm = {r["concurrency"]: r for r in results.get("litellm-proxy", [])}
    lines = [
        "| target | c=1 p50 ms | c=1 p99 ms | c=1 overhead p50 ms | c=16 rps | c=16 p99 ms | c=64 rps | c=64 p99 ms | c=64 vs direct | c=64 vs LiteLLM | server CPU ms/req (c=1, c=64) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, rows in results.items():
        by = {r["concurrency"]: r for r in rows}
        overhead = by[1]["p50_ms"] - direct[1]["p50_ms"] if direct else float("nan")
        ratio = by[64]["throughput_rps"] / direct[64]["throughput_rps"] if direct else float("nan")
        vs_litellm = (
            f"{by[64]['throughput_rps'] / litellm[64]['throughput_rps']:.1f}x" if litellm else "-"
        )
        lines.append(
            f"| {name} | {by[1]['p50_ms']:.3f} | {by[1]['p99_ms']:.3f} | {overhead:.3f} | "
            f"{by[16]['throughput_rps']:.0f} | {by[16]['p99_ms']:.2f} | {by[64]['throughput_rps']:.0f} | "
            f"{by[64]['p99_ms']:.2f} | {ratio:.0%} | {vs_litellm} | "
            f"{by[1]['server_cpu_ms_per_request']:.2f}, {by[64]['server_cpu_ms_per_request']:.2f} |"
        )
    return "\n".join(lines)


def _median_rows(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per concurrency level, the median of each figure over the rounds (and the rounds)."""
    merged = []
    for level in zip(*rounds, strict=True):
        row: dict[str, Any] = {"concurrency": level[0]["concurrency"]}
        for field in ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_ms_per_request"):
            row[field] = round(statistics.median(r[field] for r in level), 3)
        row["requests"] = sum(r["requests"] for r in level)
        row["errors"] = sum(r["errors"] for r in level)
        row["rounds"] = list(level)
        merged.append(row)
    return merged


def _measure_targets(
    targets: list[str],
    work: Path,
    upstream: str,
    upstream_pid: int,
    total: Counts,
    litellm: str,
    pg_admin: str,
    redis_url: str,
    notes: list[str],
) -> dict[str, list[dict[str, Any]]]:
    """One round: every target in turn."""
    results: dict[str, list[dict[str, Any]]] = {}
    if "direct" in targets:
        print("direct (mock upstream) ...", flush=True)
        results["direct"] = _run_all(upstream + "/v1/chat/completions", {}, total, upstream_pid)
    if "floor" in targets:
        print("floor (bare Python proxy) ...", flush=True)
        results["floor-bare-python-proxy"] = _bench_floor(work / "floor", upstream, total)
    if "embedded" in targets:
        print("enclava, embedded (SQLite, in-process cache) ...", flush=True)
        results["enclava-embedded"] = _bench_enclava("embedded", work / "embedded", upstream, total)
    if "postgres" in targets:
        print("enclava, PostgreSQL + Redis ...", flush=True)
        try:
            database = _reset_postgres(pg_admin, "enclava_bench")
            _flush_redis(redis_url)
            results["enclava-postgres-redis"] = _bench_enclava(
                "postgres", work / "postgres", upstream, total, database, redis_url
            )
        except (OSError, ConnectionError) as exc:
            notes.append(f"postgres target skipped: {exc}")
    if "litellm" in targets:
        if not Path(litellm).exists() and os.environ.get("BENCH_LITELLM_INSTALL", "1") == "1":
            _install_litellm(notes)
        if shutil.which(litellm) or Path(litellm).exists():
            print("litellm proxy ...", flush=True)
            results["litellm-proxy"] = _bench_litellm(litellm, work / "litellm", upstream, total)
        else:
            notes.append(f"LiteLLM not measured: {litellm} not found (see docs/benchmarks.md)")
    return results


def _spread(results: dict[str, list[dict[str, Any]]]) -> str:
    """Across rounds: the lowest and highest c=1 overhead (against direct in the same round) and
    c=64 throughput of each target."""
    direct = {r["concurrency"]: r for r in results.get("direct", [])}
    lines = [
        "| target | c=1 overhead p50 ms, min-max | c=64 rps, min-max |",
        "| --- | ---: | ---: |",
    ]
    for name, rows in results.items():
        by = {r["concurrency"]: r for r in rows}
        if direct:
            overheads = [
                mine["p50_ms"] - base["p50_ms"]
                for mine, base in zip(by[1]["rounds"], direct[1]["rounds"], strict=True)
            ]
            overhead = f"{min(overheads):.3f} - {max(overheads):.3f}"
        else:
            overhead = "-"
        rps = [r["throughput_rps"] for r in by[64]["rounds"]]
        lines.append(f"| {name} | {overhead} | {min(rps):.0f} - {max(rps):.0f} |")
    return "\n".join(lines)


def main() -> None:
    targets = os.environ.get("BENCH_TARGETS", "direct,floor,embedded,postgres,litellm").split(",")
    total = _counts(os.environ.get("BENCH_REQUESTS", "2000"))
    # Rounds run every target in turn, again and again; the table gives each figure's median
    # over the rounds, so a slow minute on a shared machine moves every target alike.
    rounds = int(os.environ.get("BENCH_ROUNDS", "1"))
    latency = os.environ.get("BENCH_UPSTREAM_LATENCY_MS", "0")
    jitter = os.environ.get("BENCH_UPSTREAM_JITTER_MS", "0")
    litellm = os.environ.get("BENCH_LITELLM", str(ROOT / "bench/.litellm-venv/bin/litellm"))
    pg_admin = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    notes: list[str] = []
    work = Path(tempfile.mkdtemp(prefix="enclava-bench-"))
    per_round: list[dict[str, list[dict[str, Any]]]] = []
    upstream_port = _port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    with _process(
        _mock_upstream(upstream_port, latency, jitter), {}, work / "mock.log"
    ) as mock_proc:
        _wait_http(upstream + "/v1/models")
        for index in range(rounds):
            if rounds > 1:
                print(f"round {index + 1} of {rounds}", flush=True)
            per_round.append(
                _measure_targets(
                    targets,
                    work / f"round-{index + 1}",
                    upstream,
                    mock_proc.pid,
                    total,
                    litellm,
                    pg_admin,
                    redis_url,
                    notes,
                )
            )
    results = {
        name: _median_rows([found[name] for found in per_round if name in found])
        for name in per_round[0]
    }
    table = _table(results)
    if rounds > 1:
        table += "\n\n" + _spread(results)
    print(table)
    for note in notes:
        print("note:", note)
    out = ROOT / "bench/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "gateway.json").write_text(
        json.dumps(
            {
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "requests_per_level": {str(c): n for c, n in total.items()},
                "rounds": rounds,
                "upstream_latency_ms": float(latency),
                "upstream_jitter_ms": float(jitter),
                "results": results,
                "notes": notes,
                "work_dir": str(work),
            },
            indent=2,
        )
    )
