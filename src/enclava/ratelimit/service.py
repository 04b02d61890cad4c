"""Request rate limits per API key (by tier or the key's own override) and per signed-in user.

Limits are counted with the ``limits`` library: a moving window by default (exact: at most N
requests in any window-long span), in process memory when embedded and in Redis when
``ENCLAVA_REDIS_URL`` is set, where one Lua script per hit makes the count atomic across every
instance. If Redis cannot be reached the request is refused with 503: an unreachable counter
must not turn into unlimited traffic. See docs/decisions/0003-identity-and-access.md.

The authentication dependencies call :func:`enforce`, so every endpoint that names a subject
(``ApiKeySubject``, ``require_scopes(...)``, ``UserSubject``, ``AdminSubject``) is limited.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerHour, RateLimitItemPerMinute
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from limits.errors import StorageError
from redis.exceptions import RedisError

from enclava.auth.subject import AuthSubject
from enclava.config import Settings
from enclava.errors import RateLimitError, ServiceUnavailableError
from enclava.kit.cache import Cache, RedisCache
from enclava.state import AppState

logger = logging.getLogger(__name__)

# Where the limiter lives in ``AppState.extras``.
STATE_KEY = "rate_limiter"
KEY_PREFIX = "enclava:ratelimit"
# Identities whose room hint an instance keeps.
_MAX_REMEMBERED = 10_000


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


class RequestRateLimiter:
    """Counts hits against every window of a policy; refuses the first window that is full."""

    def __init__(self, storage: Storage, strategy: str) -> None:
        self._storage = storage
        self._remote = not isinstance(storage, MemoryStorage)
        # Per identity: did this instance last see every window but the longest with room to
        # spare? A hint only (bounded, per instance); see _count.
        self._room: OrderedDict[str, bool] = OrderedDict()
        self._limiter: RateLimiter = (
            SlidingWindowCounterRateLimiter(storage)
            if strategy == "sliding-window-counter"
            else MovingWindowRateLimiter(storage)
        )

    @classmethod
    def create(cls, settings: Settings, cache: Cache) -> RequestRateLimiter:
        storage: Storage
        if isinstance(cache, RedisCache) and settings.redis_url:
            # Shares the cache's connection pool, which the lifespan closes.
            storage = RedisStorage(
                _limits_uri(settings.redis_url),
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                connection_pool=cache.client.connection_pool,  # type: ignore[arg-type]
            )
        else:
            storage = MemoryStorage()
        return cls(storage, settings.rate_limit_strategy)

    async def hit(self, policy: Policy) -> WindowUsage:
        """Count one request, or raise ``RateLimitError`` (429) naming when to retry.

        In memory, windows are counted shortest first, so a request refused by the minute
        window does not use up the hour. One admitted by the minute window and refused by the
        hour stays counted in the minute: the error is on the safe side.

        On Redis every window is one round trip, so they are counted at once when this instance
        last saw the shorter windows with room to spare (see :meth:`_count`); the usage for the
        headers is then read, also at once: two round trips instead of one per window plus one.
        """
        identity = policy.identity
        try:
            refused = await self._count(policy)
            if refused is not None:
                self._room[identity] = False
                usage = await self._usage(refused, identity)
                retry_after = max(1, usage.reset_after_s)
                raise RateLimitError(
                    f"Rate limit exceeded: {refused.amount} requests per "
                    f"{_window_name(refused)}; retry after {retry_after} s",
                    headers={"Retry-After": str(retry_after), **usage.headers()},
                )
            if self._remote:
                # Read-only, so the windows' round trips to Redis can overlap.
                usages = list(
                    await asyncio.gather(*(self._usage(w, identity) for w in policy.windows))
                )
            else:
                usages = [await self._usage(w, identity) for w in policy.windows]
        except (StorageError, RedisError, OSError) as exc:
            logger.error("rate limit store unreachable", extra={"error": type(exc).__name__})
            raise ServiceUnavailableError(
                "Rate limit store unavailable; request refused",
                code="rate_limit_store_unavailable",
            ) from exc
        self._remember_room(identity, usages)
        # Report the window with the fewest requests left (the shorter one on a tie).
        return min(usages, key=lambda u: u.remaining)

    async def _count(self, policy: Policy) -> RateLimitItem | None:
        """Count the request in every window; the first window that refused it, if any.

        Shortest first, stopping at a refusal, unless the windows are on Redis and this
        instance last saw every window but the longest with room to spare: then all at once,
        in one round trip. A request that a shorter window then refuses stays counted in the
        longer ones; the room kept (a tenth of the limit) makes that rare, and it stops as soon
        as a refusal is seen, so a client retrying at the limit does not use up its hour.
        """
        identity = policy.identity
        if self._remote and self._room.get(identity, False):
            admitted = await asyncio.gather(
                *(self._limiter.hit(window, identity) for window in policy.windows)
            )
            return next((w for w, ok in zip(policy.windows, admitted, strict=True) if not ok), None)
        for window in policy.windows:
            if not await self._limiter.hit(window, identity):
                return window
        return None

    def _remember_room(self, identity: str, usages: list[WindowUsage]) -> None:
        if not self._remote:
            return
        self._room[identity] = all(u.remaining >= max(1, u.limit // 10) for u in usages[:-1])
        self._room.move_to_end(identity)
        while len(self._room) > _MAX_REMEMBERED:
            self._room.popitem(last=False)

    async def _usage(self, window: RateLimitItem, identity: str) -> WindowUsage:
        stats = await self._limiter.get_window_stats(window, identity)
        reset_after = max(0, math.ceil(stats.reset_time - time.time()))
        return WindowUsage(window.amount, max(0, stats.remaining), reset_after)


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
