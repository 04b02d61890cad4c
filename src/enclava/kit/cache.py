"""A small async cache interface with an in-process backend and a Redis backend.

Values are bytes or JSON-able objects (stored as JSON). Both backends honour TTLs and both can
be shared by several tasks; only the Redis backend is shared between processes and instances.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from typing import Any

import orjson
import redis.asyncio as aioredis


class Cache(ABC):
    """Key/value cache with TTLs. Keys are namespaced by the caller (``"apikey:<hash>"``)."""

    @abstractmethod
    async def get(self, key: str) -> Any | None: ...

    @abstractmethod
    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None: ...

    @abstractmethod
    async def delete(self, *keys: str) -> int: ...

    @abstractmethod
    async def incr(self, key: str, amount: int = 1, ttl_s: float | None = None) -> int:
        """Atomically add ``amount``; the TTL is set when the key is created."""

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

    async def ping(self) -> bool:
        return True


class RedisCache(Cache):
    """Redis-backed cache shared by every instance; values are stored as JSON."""

    def __init__(self, client: aioredis.Redis, prefix: str = "enclava:") -> None:
        self._redis = client
        self._prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "enclava:") -> RedisCache:
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
        )
        return cls(client, prefix)

    @property
    def client(self) -> aioredis.Redis:
        return self._redis

    async def get(self, key: str) -> Any | None:
        raw = await self._redis.get(self._prefix + key)
        return None if raw is None else orjson.loads(raw)

    async def set(self, key: str, value: Any, ttl_s: float | None = None) -> None:
        px = int(ttl_s * 1000) if ttl_s else None
        await self._redis.set(self._prefix + key, orjson.dumps(value), px=px)

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

    async def ping(self) -> bool:
        return bool(await self._redis.ping())

    async def close(self) -> None:
        await self._redis.aclose()


def create_cache(redis_url: str | None) -> Cache:
    return RedisCache.from_url(redis_url) if redis_url else MemoryCache()
