from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from enclava.kit.cache import Cache, MemoryCache, RedisCache
from tests.conftest import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[Cache]:
    if request.param == "memory":
        yield MemoryCache(max_entries=100)
        return
    backend = RedisCache.from_url(REDIS_URL, prefix=f"test:{uuid.uuid4().hex}:")
    try:
        yield backend
    finally:
        await backend.close()


async def test_set_get_delete(cache: Cache) -> None:
    assert await cache.get("missing") is None
    await cache.set("k", {"a": [1, 2]})
    assert await cache.get("k") == {"a": [1, 2]}
    assert await cache.delete("k", "other") == 1
    assert await cache.get("k") is None


async def test_ttl_expires(cache: Cache) -> None:
    await cache.set("short", "v", ttl_s=0.05)
    await cache.set("long", "v", ttl_s=30)
    await asyncio.sleep(0.15)
    assert await cache.get("short") is None
    assert await cache.get("long") == "v"


async def test_incr_is_atomic_under_concurrency(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.incr("counter", 1, ttl_s=30) for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await cache.get("counter") == 200


async def test_incr_keeps_the_first_ttl(cache: Cache) -> None:
    await cache.incr("window", 1, ttl_s=0.1)
    await cache.incr("window", 1, ttl_s=30)
    await asyncio.sleep(0.2)
    assert await cache.get("window") is None


async def test_ping(cache: Cache) -> None:
    assert await cache.ping()


async def test_memory_cache_evicts_least_recently_used() -> None:
    cache = MemoryCache(max_entries=2)
    await cache.set("a", 1)
    await cache.set("b", 2)
    assert await cache.get("a") == 1  # a is now the most recent
    await cache.set("c", 3)
    assert await cache.get("b") is None
    assert await cache.get("a") == 1 and await cache.get("c") == 3


async def test_set_if_sets_only_over_what_was_seen(cache: Cache) -> None:
    assert await cache.set_if("k", None, {"n": 1}, ttl_s=30)  # absent, as expected
    assert not await cache.set_if("k", None, {"n": 2}, ttl_s=30)  # no longer absent
    seen = await cache.get("k")
    assert await cache.set_if("k", seen, {"n": 3}, ttl_s=30)
    assert not await cache.set_if("k", seen, {"n": 4}, ttl_s=30)  # changed since it was seen
    assert await cache.get("k") == {"n": 3}


async def test_set_if_expected_value_must_match_exactly(cache: Cache) -> None:
    await cache.set("k", {"tombstone": "a1", "n": 1.5})
    assert not await cache.set_if("k", {"tombstone": "b2", "n": 1.5}, "x")
    assert not await cache.set_if("k", None, "x")
    assert await cache.set_if("k", await cache.get("k"), "x")
    assert await cache.get("k") == "x"


async def test_set_if_honours_the_ttl_and_expiry(cache: Cache) -> None:
    await cache.set("k", "old", ttl_s=0.05)
    await asyncio.sleep(0.15)
    assert await cache.set_if("k", None, "new", ttl_s=0.05)  # expired counts as absent
    assert await cache.get("k") == "new"
    await asyncio.sleep(0.15)
    assert await cache.get("k") is None


async def test_set_if_is_atomic_under_concurrency(cache: Cache) -> None:
    results = await asyncio.gather(*(cache.set_if("k", None, n, ttl_s=30) for n in range(50)))
    assert results.count(True) == 1
    assert await cache.get("k") == results.index(True)


async def test_set_many(cache: Cache) -> None:
    await cache.set_many({"a": 1, "b": {"x": [2]}}, ttl_s=0.05)
    assert await cache.get("a") == 1 and await cache.get("b") == {"x": [2]}
    await asyncio.sleep(0.15)
    assert await cache.get("a") is None and await cache.get("b") is None
    await cache.set_many({})
