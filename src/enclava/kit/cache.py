"""A small async cache interface with an in-process backend and a Redis backend.

Values are bytes or JSON-able objects (stored as JSON). Both backends honour TTLs and both can
be shared by several tasks; only the Redis backend is shared between processes and instances.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import orjson
import redis.asyncio as aioredis


class Cache(ABC):
    """Key/value cache with TTLs. Keys are namespaced by the caller (``"apikey:<hash>"``)."""

    @abstractmethod
    async def get(self, key: str) -> Any | None: ...

    @abstractmethod
    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None: ...

    async def set_many(self, values: Mapping[str, Any], ttl_s: float | None = None) -> None:
        """Set several keys with one TTL (one round trip on Redis)."""
        for key, value in values.items():
            await self.set(key, value, ttl_s)

    @abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Atomically add ``amount``; the TTL is set when the key is created."""

    @abstractmethod
    async def set_if(
        self, key: str, expected: Any | None, value: Any, ttl_s: float | None = None
    ) -> bool:
        """Atomically set ``key`` to ``value`` only if it still holds ``expected`` (``None``:
        absent or expired); True if it was set. ``expected`` is what :meth:`get` returned; it is
        compared by value (by its JSON encoding on Redis), so pass it back unchanged."""

    @abstractmethod
    async def ping(self) -> bool: ...

    async def close(self) -> None:
        return None


class MemoryCache(Cache):
    """In-process LRU cache with per-entry expiry, for the embedded single-process mode."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._data: OrderedDict[str, tuple[float | None, Any]] = OrderedDict()
        self._max_entries = max_entries

    def _alive(self, key: str) -> tuple[float | None, Any] | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        expires_at, _ = entry
        if expires_at is not None and expires_at <= time.monotonic():
            del self._data[key]
            return None
        return entry

    async def get(self, key: str) -> Any | None:
        entry = self._alive(key)
        if entry is None:
            return None
        self._data.move_to_end(key)
        return entry[1]

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        expires_at = time.monotonic() + ttl_s if ttl_s else None
        self._data[key] = (expires_at, value)
        self._data.move_to_end(key)
        while len(self._data) > self._max_entries:
            self._data.popitem(last=False)

    async def delete(self, *keys: str) -> int:
        return sum(1 for key in keys if self._data.pop(key, None) is not None)

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        entry = self._alive(key)
        if entry is None:
            await self.set(key, amount, ttl_s)
            return amount
        expires_at, value = entry
        value = int(value) + amount
        self._data[key] = (expires_at, value)
        return value

    async def set_if(
        self, key: str, expected: Any | None, value: Any, ttl_s: float | None = None
    ) -> bool:
        # No await between the check and the write: atomic within the event loop.
        entry = self._alive(key)
        current = None if entry is None else entry[1]
        if (entry is None) != (expected is None) or current != expected:
            return False
        await self.set(key, value, ttl_s)
        return True

    async def ping(self) -> bool:
        return True


# SET only if the stored bytes are ARGV[1] ('' = absent); ARGV[3] is the TTL in ms ('' = none).
_SET_IF_SCRIPT = """
local current = redis.call('GET', KEYS[1])
if (current == false and ARGV[1] == '') or current == ARGV[1] then
    if ARGV[3] == '' then
        redis.call('SET', KEYS[1], ARGV[2])
    else
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
    end
    return 1
end
return 0
"""


class RedisCache(Cache):
    """Redis-backed cache shared by every instance; values are stored as JSON."""

    def __init__(self, client: aioredis.Redis, prefix: str = "enclava:") -> None:
        self._redis = client
        self._prefix = prefix
        self._set_if = client.register_script(_SET_IF_SCRIPT)

    @classmethod
    def from_url(cls, url: str, prefix: str = "enclava:") -> RedisCache:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        return cls(client, prefix)

    @property
    def client(self) -> aioredis.Redis:
        return self._redis

    def name(self, key: str) -> str:
        """The key's name on Redis, for callers that send their own commands or scripts."""
        return self._prefix + key

    async def get(self, key: str) -> Any | None:
        raw = await self.get_raw(key)
        return None if raw is None else orjson.loads(raw)

    async def get_raw(self, key: str) -> bytes | None:
        """The value's stored bytes (its JSON encoding), as :meth:`get` reads them."""
        raw = await self._redis.get(self._prefix + key)
        return None if raw is None else bytes(raw)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        px = int(ttl_s * 1000) if ttl_s else None
        await self._redis.set(self._prefix + key, orjson.dumps(value), px=px)

    async def set_many(self, values: Mapping[str, Any], ttl_s: float | None = None) -> None:
        if not values:
            return
        px = int(ttl_s * 1000) if ttl_s else None
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, value in values.items():
                pipe.set(self._prefix + key, orjson.dumps(value), px=px)
            await pipe.execute()

    async def delete(self, *keys: str) -> int:
        if not keys:
            return 0
        return int(await self._redis.delete(*(self._prefix + k for k in keys)))

    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        full = self._prefix + key
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incrby(full, amount)
            if ttl_s:
                pipe.pexpire(full, int(ttl_s * 1000), nx=True)
            result = await pipe.execute()
        return int(result[0])

    async def set_if(
        self, key: str, expected: Any | None, value: Any, ttl_s: float | None = None
    ) -> bool:
        # orjson encodes a decoded value back to the same bytes (key order and numbers kept).
        encoded_expected = b"" if expected is None else orjson.dumps(expected)
        px = str(int(ttl_s * 1000)) if ttl_s else ""
        done = await self._set_if(
            keys=[self._prefix + key], args=[encoded_expected, orjson.dumps(value), px]
        )
        return bool(done)

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def create_cache(redis_url: str | None) -> Cache:
    return RedisCache.from_url(redis_url) if redis_url else MemoryCache()
