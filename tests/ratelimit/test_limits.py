"""Rate limits: per key by tier (and per-key overrides), per signed-in user, across instances."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from enclava.auth.tokens import create_access_token
from enclava.db import transaction
from tests.auth.probe import internal_probe, public_probe
from tests.conftest import BACKEND, TEST_SECRET, Actors, StartApp

PROBE = "/api/v1/_probe/chat"
ME = "/api-internal/v1/auth/me"


def _limits(**overrides: int) -> dict[str, int]:
    """Small limits for tests; anything not named stays out of the way."""
    values = {
        "rate_limit_standard_per_minute": 1000,
        "rate_limit_standard_per_hour": 1000,
        "rate_limit_premium_per_minute": 1000,
        "rate_limit_premium_per_hour": 1000,
        "rate_limit_user_per_minute": 1000,
        "rate_limit_user_per_hour": 1000,
    }
    values.update(overrides)
    return values


async def test_key_limit_headers_and_openai_shaped_429(make_app: StartApp) -> None:
    app, client = await make_app(public_probe, **_limits(rate_limit_standard_per_minute=3))
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())

    remaining = []
    for _ in range(3):
        response = await client.get(PROBE, headers=key["headers"])
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "3"
        assert 0 <= int(response.headers["x-ratelimit-reset"]) <= 60
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    assert remaining == [2, 1, 0]

    refused = await client.get(PROBE, headers=key["headers"])
    assert refused.status_code == 429
    assert refused.json()["error"] == {
        "message": refused.json()["error"]["message"],
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert "3 requests per minute" in refused.json()["error"]["message"]
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert refused.headers["x-ratelimit-limit"] == "3"


async def test_tiers_and_per_key_overrides(make_app: StartApp) -> None:
    app, client = await make_app(
        public_probe,
        **_limits(rate_limit_standard_per_minute=2, rate_limit_premium_per_minute=4),
    )
    actors = Actors(app, client)
    user = await actors.user()
    standard = await actors.api_key(user)
    premium = await actors.api_key(user, tier="premium")
    custom = await actors.api_key(user, rate_limit_per_minute=1)

    async def admitted(key: dict[str, Any], attempts: int) -> int:
        statuses = [
            (await client.get(PROBE, headers=key["headers"])).status_code for _ in range(attempts)
        ]
        return statuses.count(200)

    assert await admitted(standard, 6) == 2
    assert await admitted(premium, 6) == 4
    assert await admitted(custom, 6) == 1
    # Keys are counted separately: another standard key of the same user has its own window.
    assert await admitted(await actors.api_key(user), 3) == 2


async def test_hour_window_applies_too(make_app: StartApp) -> None:
    app, client = await make_app(
        public_probe,
        **_limits(rate_limit_standard_per_minute=10, rate_limit_standard_per_hour=3),
    )
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    statuses = [(await client.get(PROBE, headers=key["headers"])).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]
    refused = await client.get(PROBE, headers=key["headers"])
    assert "3 requests per hour" in refused.json()["error"]["message"]
    # The reported window is the one closest to its limit: the hour.
    ok_app, ok_client = await make_app(
        public_probe,
        **_limits(rate_limit_standard_per_minute=10, rate_limit_standard_per_hour=5),
    )
    other = await Actors(ok_app, ok_client).api_key(await Actors(ok_app, ok_client).user())
    first = await ok_client.get(PROBE, headers=other["headers"])
    assert first.headers["x-ratelimit-limit"] == "5"


async def test_signed_in_users_are_limited_on_the_internal_api(make_app: StartApp) -> None:
    app, client = await make_app(**_limits(rate_limit_user_per_minute=2))
    user = await Actors(app, client).user()
    statuses = [(await client.get(ME, headers=user["headers"])).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = await client.get(ME, headers=user["headers"])
    assert refused.json()["code"] == "rate_limit_exceeded"  # internal shape: {detail, code}
    assert "retry-after" in refused.headers
    # Other endpoints draw on the same per-user window.
    keys = await client.get("/api-internal/v1/api-keys", headers=user["headers"])
    assert keys.status_code == 429


async def test_one_request_counts_once_whatever_it_depends_on(make_app: StartApp) -> None:
    app, client = await make_app(internal_probe, **_limits(rate_limit_user_per_minute=10))
    admin = await Actors(app, client).user(role="admin")
    first = await client.get("/api-internal/v1/_probe/user-and-admin", headers=admin["headers"])
    second = await client.get("/api-internal/v1/_probe/user-and-admin", headers=admin["headers"])
    assert first.status_code == second.status_code == 200
    assert int(first.headers["x-ratelimit-remaining"]) == 9
    assert int(second.headers["x-ratelimit-remaining"]) == 8


async def test_requests_refused_by_authentication_are_not_counted(make_app: StartApp) -> None:
    app, client = await make_app(public_probe, **_limits(rate_limit_standard_per_minute=2))
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    for _ in range(5):
        bad = await client.get(PROBE, headers={"Authorization": "Bearer ek_" + "x" * 43})
        assert bad.status_code == 401 and "x-ratelimit-limit" not in bad.headers
    assert (await client.get(PROBE, headers=key["headers"])).status_code == 200


async def test_limit_holds_across_instances(make_app: StartApp) -> None:
    """Exactly N of more than N concurrent requests are admitted, whichever instance serves
    them. With PostgreSQL + Redis there are two app instances sharing the stores. The
    embedded backend is one process by design (in-memory counters), so there the test runs
    one instance and shows the same exactness within it."""
    limit = 5
    instances = 2 if BACKEND == "postgres" else 1
    started = [
        await make_app(public_probe, **_limits(rate_limit_standard_per_minute=limit))
        for _ in range(instances)
    ]
    app, client = started[0]
    key = await Actors(app, client).api_key(await Actors(app, client).user())

    requests = [
        started[n % instances][1].get(PROBE, headers=key["headers"]) for n in range(4 * limit)
    ]
    responses = await asyncio.gather(*requests)
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == limit
    assert statuses.count(429) == 3 * limit
    # Every instance served its share and enforced the shared count.
    for n in range(instances):
        served = statuses[n::instances]
        assert set(served) <= {200, 429} and 429 in served


async def test_redis_down_refuses_instead_of_admitting(make_app: StartApp) -> None:
    """If the shared counter cannot be reached, requests are refused with 503."""
    from enclava.auth import service

    # A port where nothing listens: Redis is "down" for this instance from the start.
    app, client = await make_app(public_probe, redis_url="redis://127.0.0.1:9/0")
    async with transaction(app.state.enclava.session_factory) as session:
        user = await service.create_user(session, email="r@example.com", password="long enough")
        user_id = user.id
    token = create_access_token(TEST_SECRET, user_id, 60)

    me = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 503
    assert me.json()["code"] == "rate_limit_store_unavailable"

    from enclava.api_keys import service as key_service

    async with transaction(app.state.enclava.session_factory) as session:
        owner = await session.get(type(user), user_id)
        assert owner is not None
        _, key = await key_service.create_key(session, TEST_SECRET, owner, name="k")
    public = await client.get(PROBE, headers={"Authorization": f"Bearer {key}"})
    assert public.status_code == 503
    assert public.json()["error"]["type"] == "api_error"

    login = await client.post(
        "/api-internal/v1/auth/login", json={"email": "r@example.com", "password": "long enough"}
    )
    assert login.status_code == 503


async def test_limits_can_be_switched_off(make_app: StartApp) -> None:
    app, client = await make_app(
        public_probe, rate_limit_enabled=False, **_limits(rate_limit_standard_per_minute=1)
    )
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    for _ in range(3):
        response = await client.get(PROBE, headers=key["headers"])
        assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


async def test_sliding_window_counter_strategy(make_app: StartApp) -> None:
    app, client = await make_app(
        public_probe,
        rate_limit_strategy="sliding-window-counter",
        **_limits(rate_limit_standard_per_minute=3),
    )
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    statuses = [(await client.get(PROBE, headers=key["headers"])).status_code for _ in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


async def test_headers_reach_streamed_responses(make_app: StartApp) -> None:
    app, client = await make_app(public_probe, **_limits(rate_limit_standard_per_minute=7))
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    response = await client.get("/api/v1/_probe/stream", headers=key["headers"])
    assert response.status_code == 200
    assert response.text == "data: 0\n\ndata: 1\n\ndata: 2\n\n"
    assert response.headers["x-ratelimit-limit"] == "7"
    assert response.headers["x-ratelimit-remaining"] == "6"


async def test_unauthenticated_routes_carry_no_rate_limit_headers(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/health")
    assert response.status_code == 200 and "x-ratelimit-limit" not in response.headers


async def test_headers_follow_every_window_request_by_request(make_app: StartApp) -> None:
    """Remaining counts down exactly, and the reported window switches to the hour when the
    hour has fewer requests left (on Redis, windows counted at once and read at once)."""
    app, client = await make_app(
        public_probe,
        **_limits(rate_limit_standard_per_minute=20, rate_limit_standard_per_hour=24),
    )
    actors = Actors(app, client)
    key = await actors.api_key(await actors.user())
    seen = []
    for _ in range(6):
        response = await client.get(PROBE, headers=key["headers"])
        assert response.status_code == 200
        assert 0 <= int(response.headers["x-ratelimit-reset"]) <= 3600
        seen.append(
            (response.headers["x-ratelimit-limit"], response.headers["x-ratelimit-remaining"])
        )
    # Minute: 19, 18, ... left; hour: 23, 22, ...: the minute is closer to its limit.
    assert seen == [("20", str(19 - n)) for n in range(6)]


async def test_refusals_by_the_minute_do_not_use_up_the_hour(make_app: StartApp) -> None:
    """A client that keeps retrying at the minute limit keeps its hour for later: requests
    the minute window refuses are not counted in the hour window."""
    from limits import RateLimitItemPerHour, RateLimitItemPerMinute

    from enclava.errors import RateLimitError
    from enclava.ratelimit.service import Policy, get_limiter

    app, _ = await make_app()
    limiter = get_limiter(app.state.enclava)
    policy = Policy("key:retrying", (RateLimitItemPerMinute(3), RateLimitItemPerHour(10)))
    outcomes = []
    for _ in range(12):
        try:
            await limiter.hit(policy)
            outcomes.append(200)
        except RateLimitError:
            outcomes.append(429)
    assert outcomes == [200] * 3 + [429] * 9
    # The hour window alone: 3 used by the admitted requests, so this is the 4th of 10.
    usage = await limiter.hit(Policy("key:retrying", (RateLimitItemPerHour(10),)))
    assert usage.limit == 10 and usage.remaining == 6


async def test_counts_read_the_same_through_the_limits_library(make_app: StartApp) -> None:
    """Whatever path counted the hits (on Redis, one script for every window), the limits
    library's own moving-window reader sees the same windows: the data layout is shared."""
    from limits import RateLimitItemPerHour, RateLimitItemPerMinute

    from enclava.ratelimit.service import Policy, get_limiter

    app, _ = await make_app()
    limiter = get_limiter(app.state.enclava)
    windows = (RateLimitItemPerMinute(5), RateLimitItemPerHour(50))
    policy = Policy("key:shared", windows)
    for n in range(1, 4):
        usage = await limiter.hit(policy)
        assert (usage.limit, usage.remaining) == (5, 5 - n)
        assert 59 <= usage.reset_after_s <= 60
    # limits' own MovingWindowRateLimiter on the same storage (its synchronous one in memory).
    for window in windows:
        if limiter._local is not None:
            stats = limiter._local.get_window_stats(window, "key:shared")
        else:
            assert limiter._limiter is not None
            stats = await limiter._limiter.get_window_stats(window, "key:shared")
        assert stats.remaining == window.amount - 3


def test_the_memory_storage_counts_without_starting_threads(monkeypatch: Any) -> None:
    """The embedded limiter's storage starts no timer thread per hit, still refuses at the
    limit, and sweeps entries that left every window (on a later hit, once a second)."""
    import threading

    from limits import RateLimitItemPerMinute
    from limits.strategies import MovingWindowRateLimiter

    from enclava.ratelimit import service

    storage = service.SweptMemoryStorage()
    limiter = MovingWindowRateLimiter(storage)
    window = RateLimitItemPerMinute(3)

    def no_timer(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("a hit started a timer thread")

    monkeypatch.setattr(threading, "Timer", no_timer)
    assert [limiter.hit(window, "key:a") for _ in range(4)] == [True, True, True, False]
    assert limiter.hit(window, "key:b")

    # Two minutes later (the wall clock for the entries, the monotonic one for the sweep):
    # a's entries are dropped by the next hit (on any key), and a is admitted again.
    wall, mono = service.time.time(), service.time.monotonic()
    monkeypatch.setattr("limits.storage.memory.time.time", lambda: wall + 120)
    monkeypatch.setattr(service.time, "monotonic", lambda: mono + 120)
    assert limiter.hit(window, "key:b")
    assert [len(events) for name, events in storage.events.items() if "key:a" in name] == [0]
    assert limiter.hit(window, "key:a")
