"""Request rate limits per API key (by tier or the key's own override) and per signed-in user.

Limits are moving windows by default (exact: at most N requests in any window-long span), in
process memory when embedded and in Redis when ``ENCLAVA_REDIS_URL`` is set, so that the limit
holds across every instance. If Redis cannot be reached the request is refused with 503: an
unreachable counter must not turn into unlimited traffic. See
docs/decisions/0003-identity-and-access.md and 0008-gateway-hot-path.md.

Counting uses the ``limits`` library (its memory storage, and its Redis storage for the
sliding-window-counter strategy), except for moving windows on Redis: there one Lua script
checks every window of the policy, counts the request in all of them only if all admit it, and
returns each window's usage for the headers, atomically in one round trip. It keeps the data
exactly as ``limits``' moving window does (same keys, same lists of timestamps), so either can
read what the other wrote. In process memory the limiter is ``limits``' synchronous one: its
operations never wait on anything, and its asyncio twin hands each window's expiry scan to a
thread on every call (~10 times slower per request, measured in docs/benchmarks.md).

The authentication dependencies call :func:`enforce`, so every endpoint that names a subject
(``ApiKeySubject``, ``require_scopes(...)``, ``UserSubject``, ``AdminSubject``) is limited.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits import storage as local_storage
from limits import strategies as local_strategies
from limits.aio.storage import RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from limits.util import WindowStats
from redis.exceptions import RedisError

from enclava.auth.subject import AuthSubject
from enclava.config import Settings
from enclava.errors import RateLimitError, ServiceUnavailableError
from enclava.kit.cache import Cache, RedisCache
from enclava.kit.scripts import ScriptCall
from enclava.state import AppState

logger = logging.getLogger(__name__)

# Where the limiter lives in ``AppState.extras``.
STATE_KEY = "rate_limiter"
KEY_PREFIX = "enclava:ratelimit"


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """The state of the window closest to its limit, as reported in ``X-RateLimit-*``."""

    limit: int
    remaining: int
    # Seconds until the window admits another request (moving window: the oldest hit leaves).
    reset_after_s: int

    def headers(self) -> dict[str, str]:
        return {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_after_s),
        }


@dataclass(frozen=True, slots=True)
class Policy:
    """Whose counter a request draws on and which windows apply."""

    identity: str
    windows: tuple[RateLimitItem, ...]


def policy_for(subject: AuthSubject, settings: Settings) -> Policy:
    key = subject.api_key
    if key is not None:
        if key.tier == "premium":
            per_minute = settings.rate_limit_premium_per_minute
            per_hour = settings.rate_limit_premium_per_hour
        else:
            per_minute = settings.rate_limit_standard_per_minute
            per_hour = settings.rate_limit_standard_per_hour
        per_minute = key.rate_limit_per_minute or per_minute
        per_hour = key.rate_limit_per_hour or per_hour
        identity = f"key:{key.id}"
    else:
        per_minute = settings.rate_limit_user_per_minute
        per_hour = settings.rate_limit_user_per_hour
        identity = f"user:{subject.user_id}"
    return Policy(identity, (RateLimitItemPerMinute(per_minute), RateLimitItemPerHour(per_hour)))


# KEYS: one list per window, shortest first. ARGV[1]: now (seconds, float); then per window
# its limit and length in seconds. The same check and layout as limits' acquire_moving_window
# (newest first, trimmed to the limit, expiring after the window), for every window at once.
# Returns {0, count_1, oldest_1, count_2, oldest_2, ...} when admitted, else {i, count_i,
# oldest_i} for the first window i that is full; nothing is counted then.
_MOVING_WINDOWS_SCRIPT = """
local now = tonumber(ARGV[1])

local function usage(key, expiry)
    local low, high, found = 0, redis.call('llen', key) - 1, -1
    local target = now - expiry
    while low <= high do
        local mid = math.floor((low + high) / 2)
        local value = tonumber(redis.call('lindex', key, mid))
        if value and value >= target then
            found = mid
            low = mid + 1
        else
            high = mid - 1
        end
    end
    if found < 0 then
        return 0, ARGV[1]
    end
    return found + 1, redis.call('lindex', key, found)
end

for i = 1, #KEYS do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    local entry = redis.call('lindex', KEYS[i], limit - 1)
    if entry and tonumber(entry) >= now - expiry then
        local count, oldest = usage(KEYS[i], expiry)
        return {i, count, oldest}
    end
end
local result = {0}
for i = 1, #KEYS do
    local limit = tonumber(ARGV[2 * i])
    local expiry = tonumber(ARGV[2 * i + 1])
    redis.call('lpush', KEYS[i], ARGV[1])
    redis.call('ltrim', KEYS[i], 0, limit - 1)
    redis.call('expire', KEYS[i], expiry)
    local count, oldest = usage(KEYS[i], expiry)
    result[#result + 1] = count
    result[#result + 1] = oldest
end
return result
"""


class SweptMemoryStorage(local_storage.MemoryStorage):
    """``limits``' memory storage, its expired entries swept at most once a second on the
    thread that counts, instead of by a ``threading.Timer`` it would start again 10 ms after
    nearly every hit (a thread started and run ~100 times a second under load, a tenth of the
    embedded gateway's CPU; docs/benchmarks.md).

    Sweeping only frees memory: moving windows are decided on the entries' timestamps, swept
    or not. ``limits`` calls the hook below before every count; it is private to
    ``MemoryStorage``, so ``limits`` is pinned in constraints.txt and
    tests/ratelimit/test_limits.py fails if a release stops calling it or starts timers again.
    """

    SWEEP_INTERVAL_S = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._next_sweep = 0.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # the hook, under its mangled name
        now = time.monotonic()
        if now >= self._next_sweep:
            self._next_sweep = now + self.SWEEP_INTERVAL_S
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


class RequestRateLimiter:
    """Counts hits against every window of a policy; refuses the first window that is full."""

    def __init__(
        self,
        storage: Storage | local_storage.MemoryStorage,
        strategy: str,
        redis: aioredis.Redis | None = None,
    ) -> None:
        self._limiter: RateLimiter | None = None
        self._local: local_strategies.RateLimiter | None = None
        sliding = strategy == "sliding-window-counter"
        if isinstance(storage, local_storage.MemoryStorage):
            self._local = (
                local_strategies.SlidingWindowCounterRateLimiter(storage)
                if sliding
                else local_strategies.MovingWindowRateLimiter(storage)
            )
        else:
            self._limiter = (
                SlidingWindowCounterRateLimiter(storage)
                if sliding
                else MovingWindowRateLimiter(storage)
            )
        self._moving_windows = (
            redis.register_script(_MOVING_WINDOWS_SCRIPT)
            if redis is not None and strategy == "moving-window"
            else None
        )

    @classmethod
    def create(cls, settings: Settings, cache: Cache) -> RequestRateLimiter:
        storage: Storage | local_storage.MemoryStorage
        redis = None
        if isinstance(cache, RedisCache) and settings.redis_url:
            # Shares the cache's connection pool, which the lifespan closes.
            redis = cache.client
            storage = RedisStorage(
                _limits_uri(settings.redis_url),
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                connection_pool=redis.connection_pool,  # type: ignore[arg-type]
            )
        else:
            storage = SweptMemoryStorage()
        return cls(storage, settings.rate_limit_strategy, redis)

    async def hit(self, policy: Policy) -> WindowUsage:
        """Count one request, or raise ``RateLimitError`` (429) naming when to retry.

        Moving windows on Redis: one script, all windows or none (a refused request is counted
        in no window). Otherwise windows are counted shortest first, so a request refused by
        the minute window does not use up the hour; one admitted by the minute window and
        refused by the hour stays counted in the minute: the error is on the safe side.
        """
        try:
            if self._local is not None:
                refused, usages = self._hit_local(policy)
            elif self._moving_windows is not None:
                call = self.moving_windows_call(policy)
                result = await self._moving_windows(keys=call.keys, args=call.args)
                refused, usages = call.outcome(result)
            else:
                refused, usages = await self._hit_windows(policy)
        except (StorageError, RedisError, OSError) as exc:
            raise store_unavailable(exc) from exc
        return admitted_usage(refused, usages)

    @property
    def counts_in_one_script(self) -> bool:
        """Whether a hit is one Lua script on Redis, which a caller may run inside a script of
        its own through :meth:`moving_windows_call` (moving windows on Redis)."""
        return self._moving_windows is not None

    def moving_windows_call(
        self, policy: Policy
    ) -> ScriptCall[tuple[RateLimitItem | None, list[WindowUsage]]]:
        """The moving-window script's call for one hit of ``policy``, to run on Redis."""
        now = time.time()
        args: list[str | int] = [repr(now)]
        for window in policy.windows:
            args += [window.amount, window.get_expiry()]
        keys = [f"{KEY_PREFIX}:{w.key_for(policy.identity)}" for w in policy.windows]

        def outcome(result: Any) -> tuple[RateLimitItem | None, list[WindowUsage]]:
            refused_index = int(result[0])
            if refused_index:
                window = policy.windows[refused_index - 1]
                return window, [_moving_usage(window, int(result[1]), float(result[2]), now)]
            usages = [
                _moving_usage(window, int(result[1 + 2 * n]), float(result[2 + 2 * n]), now)
                for n, window in enumerate(policy.windows)
            ]
            return None, usages

        return ScriptCall(_MOVING_WINDOWS_SCRIPT, keys, args, outcome)

    def _hit_local(self, policy: Policy) -> tuple[RateLimitItem | None, list[WindowUsage]]:
        assert self._local is not None
        for window in policy.windows:
            if not self._local.hit(window, policy.identity):
                return window, [self._local_usage(window, policy.identity)]
        return None, [self._local_usage(w, policy.identity) for w in policy.windows]

    def _local_usage(self, window: RateLimitItem, identity: str) -> WindowUsage:
        assert self._local is not None
        return _usage_of(window, self._local.get_window_stats(window, identity))

    async def _hit_windows(self, policy: Policy) -> tuple[RateLimitItem | None, list[WindowUsage]]:
        assert self._limiter is not None
        for window in policy.windows:
            if not await self._limiter.hit(window, policy.identity):
                return window, [await self._usage(window, policy.identity)]
        # One call after another: on loopback, overlapping them costs more than it saves.
        return None, [await self._usage(w, policy.identity) for w in policy.windows]

    async def _usage(self, window: RateLimitItem, identity: str) -> WindowUsage:
        assert self._limiter is not None
        return _usage_of(window, await self._limiter.get_window_stats(window, identity))


def store_unavailable(exc: Exception) -> ServiceUnavailableError:
    logger.error("rate limit store unreachable", extra={"error": type(exc).__name__})
    return ServiceUnavailableError(
        "Rate limit store unavailable; request refused", code="rate_limit_store_unavailable"
    )


def admitted_usage(refused: RateLimitItem | None, usages: list[WindowUsage]) -> WindowUsage:
    """The usage to report for an admitted hit, or ``RateLimitError`` for a refused one."""
    if refused is not None:
        usage = usages[0]
        retry_after = max(1, usage.reset_after_s)
        raise RateLimitError(
            f"Rate limit exceeded: {refused.amount} requests per "
            f"{_window_name(refused)}; retry after {retry_after} s",
            headers={"Retry-After": str(retry_after), **usage.headers()},
        )
    # Report the window with the fewest requests left (the shorter one on a tie).
    return min(usages, key=lambda u: u.remaining)


def _usage_of(window: RateLimitItem, stats: WindowStats) -> WindowUsage:
    reset_after = max(0, math.ceil(stats.reset_time - time.time()))
    return WindowUsage(window.amount, max(0, stats.remaining), reset_after)


def _moving_usage(window: RateLimitItem, count: int, oldest: float, now: float) -> WindowUsage:
    # As limits' MovingWindowRateLimiter.get_window_stats: the oldest hit leaves the window.
    reset_after = max(0, math.ceil(oldest + window.get_expiry() - now))
    return WindowUsage(window.amount, max(0, window.amount - count), reset_after)


def _window_name(window: RateLimitItem) -> str:
    return "minute" if isinstance(window, RateLimitItemPerMinute) else "hour"


def _limits_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


def get_limiter(state: AppState) -> RequestRateLimiter:
    limiter = state.extras.get(STATE_KEY)
    if limiter is None:
        # Apps built without the lifespan's limiter (scripts, tests of a bare state).
        limiter = RequestRateLimiter.create(state.settings, state.cache)
        state.extras[STATE_KEY] = limiter
    assert isinstance(limiter, RequestRateLimiter)
    return limiter


async def enforce(state: AppState, subject: AuthSubject) -> WindowUsage | None:
    """Count this request against the subject's limits; None when limits are switched off."""
    if not state.settings.rate_limit_enabled:
        return None
    return await get_limiter(state).hit(policy_for(subject, state.settings))
