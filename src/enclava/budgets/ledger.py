"""The budget ledger: live counters of what each budget has spent and holds reserved.

Reserving is one atomic step on the shared store (a Lua script on Redis; synchronous dict code
with no ``await`` between check and update in memory), so concurrent calls on any number of
instances sharing the store never overspend. The database stays the durable record (budget
definitions, settled ``spent_nanousd``, usage rows); the ledger is rebuilt from it lazily:

- per *owner* (a user or an API key): its active budgets ``[{id, limit, period}]`` and a
  *generation*, bumped by ``invalidate_owner`` after a budget change is committed. A load only
  installs definitions if the generation did not move since before its database read, so a
  load racing an invalidation never installs stale definitions.
- per *counter* ``(budget, period kind, period start)``: ``spent``, ``reserved`` and an
  *epoch*, a random tag chosen when the counter is (re)built from the database. A settlement
  whose epoch no longer matches (the counter was lost and rebuilt meanwhile) only adds its cost
  to ``spent``: the rebuild may or may not have seen it, and counting it twice refuses early
  where counting it never would overspend. See docs/decisions/0009-budget-ledger.md.

Money is integer nano-dollars. The memory ledger is process-wide per database (two app
instances in one process on one database share it, as two instances share Redis).
"""

from __future__ import annotations

import enum
import logging
import secrets
import threading
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from enclava.errors import ServiceUnavailableError
from enclava.kit.cache import Cache, RedisCache
from enclava.kit.scripts import ScriptCall

logger = logging.getLogger(__name__)

STATE_KEY = "budget_ledger"
# Definitions on Redis expire, so an invalidation lost to a Redis outage heals within this.
DEFINITIONS_TTL_S = 600
# How long a reservation's hold on Redis outlives its call's start if the call never settles
# (``ENCLAVA_BUDGET_HOLD_TTL_S``); longer than any call may run.
DEFAULT_HOLD_TTL_S = 3600.0
# A counter lives a period's length plus a day from when it is built, so it outlives its period
# (late settlements of calls that straddle the boundary) and then goes away.
_COUNTER_TTL_S = {"daily": 2 * 86_400, "weekly": 8 * 86_400, "monthly": 32 * 86_400, "total": 0}

Owner = tuple[str, uuid.UUID]  # ("user" | "key", id)


def owner_name(owner: Owner) -> str:
    return f"{owner[0]}:{owner[1]}"


@dataclass(frozen=True, slots=True)
class Charge:
    """One budget counter a reservation was added to."""

    budget_id: uuid.UUID
    period: str
    period_start: int  # unix seconds
    epoch: str

    @property
    def counter(self) -> str:
        return counter_name(self.budget_id, self.period, self.period_start)


def counter_name(budget_id: uuid.UUID | str, period: str, period_start: int) -> str:
    return f"{budget_id}:{period}:{period_start}"


def _charge(counter: str, epoch: str) -> Charge:
    budget_id, period, start = counter.split(":")
    return Charge(uuid.UUID(budget_id), period, int(start), epoch)


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one call; ``charges`` is empty when no budget applies."""

    charges: tuple[Charge, ...]
    amount_nanousd: int
    # On Redis: the id of the holds this reservation placed on its counters (see _RESERVE).
    hold: str = ""

    @property
    def budget_ids(self) -> tuple[uuid.UUID, ...]:
        return tuple(c.budget_id for c in self.charges)


class Outcome(enum.Enum):
    REFUSED = "refused"
    NEED_LOAD = "need_load"


@dataclass(frozen=True, slots=True)
class OwnerLoad:
    """An owner's active budgets as read from the database after seeing ``generation``."""

    owner: Owner
    generation: int
    definitions: list[dict[str, Any]]  # {"id": str, "limit": int, "period": str}


@dataclass(frozen=True, slots=True)
class CounterLoad:
    """A counter to create (if missing) with the database's spend for its period."""

    counter: str
    period: str
    spent: int


class BudgetLedger(Protocol):
    async def reserve(
        self, owners: Sequence[Owner], amount: int, starts: Mapping[str, int]
    ) -> Reservation | Outcome:
        """Add ``amount`` to every applicable counter if all fit, else change nothing."""

    async def generations(self, owners: Sequence[Owner]) -> list[int]: ...

    async def load(self, owners: Sequence[OwnerLoad], counters: Sequence[CounterLoad]) -> None:
        """Install definitions whose generation is unchanged; create missing counters."""

    async def settle(self, items: Sequence[tuple[Reservation, int]]) -> None:
        """Release reservations and charge their costs (after the database committed)."""

    async def invalidate_owner(self, owner: Owner) -> None: ...

    async def reserved(self, counters: Sequence[str]) -> list[int]:
        """What each counter holds reserved (0 for a counter not loaded)."""


def unavailable(exc: Exception) -> ServiceUnavailableError:
    logger.error("budget store unreachable", extra={"error": type(exc).__name__})
    return ServiceUnavailableError(
        "Budget store unavailable; request refused", code="budget_store_unavailable"
    )


def _new_epoch() -> str:
    return secrets.token_hex(8)


# -- in-process memory -------------------------------------------------------------------------


class _Counter:
    __slots__ = ("epoch", "reserved", "spent")

    def __init__(self, spent: int, epoch: str) -> None:
        self.spent = spent
        self.reserved = 0
        self.epoch = epoch


class MemoryLedger:
    """The ledger in this process's memory. Every method runs its check and update without an
    ``await`` in between, so the event loop makes each one atomic; the lock makes them atomic
    for app instances running event loops in other threads of the process too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._definitions: dict[Owner, list[tuple[str, int, str]]] = {}
        self._generations: dict[Owner, int] = {}
        self._counters: dict[str, _Counter] = {}
        self._latest: dict[str, str] = {}  # budget id -> its newest counter (older ones pruned)

    async def reserve(
        self, owners: Sequence[Owner], amount: int, starts: Mapping[str, int]
    ) -> Reservation | Outcome:
        with self._lock:
            charged: list[tuple[str, _Counter]] = []
            missing = False
            for owner in owners:
                definitions = self._definitions.get(owner)
                if definitions is None:
                    missing = True
                    continue
                for budget_id, limit, period in definitions:
                    name = counter_name(budget_id, period, starts[period])
                    counter = self._counters.get(name)
                    if counter is None:
                        missing = True
                    elif counter.spent + counter.reserved + amount > limit:
                        return Outcome.REFUSED
                    else:
                        charged.append((name, counter))
            if missing:
                return Outcome.NEED_LOAD
            for _, counter in charged:
                counter.reserved += amount
            return Reservation(tuple(_charge(n, c.epoch) for n, c in charged), amount)

    async def generations(self, owners: Sequence[Owner]) -> list[int]:
        with self._lock:
            return [self._generations.get(owner, 0) for owner in owners]

    async def load(self, owners: Sequence[OwnerLoad], counters: Sequence[CounterLoad]) -> None:
        with self._lock:
            for load in owners:
                if self._generations.get(load.owner, 0) == load.generation:
                    self._definitions[load.owner] = [
                        (d["id"], d["limit"], d["period"]) for d in load.definitions
                    ]
            for counter in counters:
                if counter.counter in self._counters:
                    continue
                self._counters[counter.counter] = _Counter(counter.spent, _new_epoch())
                budget_id = counter.counter.split(":", 1)[0]
                previous = self._latest.get(budget_id)
                if previous is not None and previous != counter.counter:
                    # A new period began: late settlements of the old one are in the database.
                    self._counters.pop(previous, None)
                self._latest[budget_id] = counter.counter

    async def settle(self, items: Sequence[tuple[Reservation, int]]) -> None:
        with self._lock:
            for reservation, cost in items:
                for charge in reservation.charges:
                    counter = self._counters.get(charge.counter)
                    if counter is None:
                        continue
                    if counter.epoch == charge.epoch:
                        counter.reserved -= reservation.amount_nanousd
                    counter.spent += cost

    async def invalidate_owner(self, owner: Owner) -> None:
        with self._lock:
            self._generations[owner] = self._generations.get(owner, 0) + 1
            self._definitions.pop(owner, None)

    async def reserved(self, counters: Sequence[str]) -> list[int]:
        with self._lock:
            return [c.reserved if (c := self._counters.get(n)) else 0 for n in counters]


# One memory ledger per database in this process, shared by the app instances using it.
_memory_ledgers: dict[str, tuple[MemoryLedger, int]] = {}
_memory_ledgers_lock = threading.Lock()


def _acquire_memory_ledger(database_url: str) -> MemoryLedger:
    with _memory_ledgers_lock:
        ledger, users = _memory_ledgers.get(database_url, (None, 0))
        if ledger is None:
            ledger = MemoryLedger()
        _memory_ledgers[database_url] = (ledger, users + 1)
        return ledger


def _release_memory_ledger(database_url: str) -> None:
    with _memory_ledgers_lock:
        ledger, users = _memory_ledgers[database_url]
        if users <= 1:
            del _memory_ledgers[database_url]
        else:
            _memory_ledgers[database_url] = (ledger, users - 1)


# -- Redis -------------------------------------------------------------------------------------

# Every reservation on Redis is also a *hold* on each counter it charged: a member
# "<epoch>:<hold id>:<amount>" of the sorted set "<counter>:holds", scored by the time (Redis
# clock, ms) after which it lapses. A settlement removes its hold and releases the amount; a hold
# whose call never settles (its instance crashed) lapses, and the next reservation on the
# counter releases it. Without this, a crash would keep the amount reserved until the counter
# expires (a "total" budget: forever).
_RELEASE_LAPSED = """
local function release_lapsed(counter, epoch, now)
  local holds = counter .. ':holds'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 100)) do
    redis.call('ZREM', holds, m)
    local hold_epoch, amount = string.match(m, '^([^:]+):[^:]+:(%d+)$')
    if hold_epoch == epoch then
      redis.call('HINCRBY', counter, 'reserved', -tonumber(amount))
    end
  end
end
"""

# KEYS: the owners' definition keys. ARGV: amount, counter key prefix, the current period
# starts (daily, weekly, monthly, total), the hold id and how long the hold lasts (ms).
# Returns {1, counter, epoch, ...}, {0} (refused) or {2} (something to load).
_RESERVE = (
    _RELEASE_LAPSED
    + """
local amount = tonumber(ARGV[1])
local prefix = ARGV[2]
local starts = {daily = ARGV[3], weekly = ARGV[4], monthly = ARGV[5], total = ARGV[6]}
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local charged = {}
local missing = false
for i = 1, #KEYS do
  local raw = redis.call('GET', KEYS[i])
  if not raw then
    missing = true
  else
    for _, d in ipairs(cjson.decode(raw)) do
      local name = d.id .. ':' .. d.period .. ':' .. starts[d.period]
      local epoch = redis.call('HGET', prefix .. name, 'epoch')
      if epoch then release_lapsed(prefix .. name, epoch, now) end
      local c = redis.call('HMGET', prefix .. name, 'spent', 'reserved', 'epoch')
      if not c[3] then
        missing = true
      elseif tonumber(c[1]) + tonumber(c[2]) + amount > tonumber(d.limit) then
        return {0}
      else
        charged[#charged + 1] = name
        charged[#charged + 1] = c[3]
      end
    end
  end
end
if missing then return {2} end
local deadline = now + tonumber(ARGV[8])
for j = 1, #charged, 2 do
  redis.call('HINCRBY', prefix .. charged[j], 'reserved', ARGV[1])
  local member = charged[j + 1] .. ':' .. ARGV[7] .. ':' .. ARGV[1]
  redis.call('ZADD', prefix .. charged[j] .. ':holds', deadline, member)
end
return {1, unpack(charged)}
"""
)

# KEYS: per owner its generation key and its definitions key, then the counter keys.
# ARGV: number of owners, definitions TTL (ms), per owner (generation seen, definitions JSON),
# per counter (spent, epoch, TTL ms or 0).
_LOAD = """
local owners = tonumber(ARGV[1])
for i = 1, owners do
  local generation = redis.call('GET', KEYS[2 * i - 1]) or '0'
  if generation == ARGV[2 * i + 1] then
    redis.call('SET', KEYS[2 * i], ARGV[2 * i + 2], 'PX', ARGV[2])
  end
end
local a = 2 * owners + 3
for j = 2 * owners + 1, #KEYS do
  if redis.call('EXISTS', KEYS[j]) == 0 then
    redis.call('HSET', KEYS[j], 'spent', ARGV[a], 'reserved', 0, 'epoch', ARGV[a + 1])
    if tonumber(ARGV[a + 2]) > 0 then redis.call('PEXPIRE', KEYS[j], ARGV[a + 2]) end
  end
  a = a + 3
end
return 1
"""

# KEYS: one counter per charge settled (a counter may repeat). ARGV: per charge the epoch, the
# hold id, the amount held and the cost to charge. The amount is released only if the hold is
# still there (it has not lapsed, and the counter was not rebuilt since); the cost is charged
# whenever the counter exists.
_SETTLE = """
for i = 1, #KEYS do
  local a = 4 * i - 3
  local epoch = redis.call('HGET', KEYS[i], 'epoch')
  if epoch then
    if epoch == ARGV[a] then
      local member = ARGV[a] .. ':' .. ARGV[a + 1] .. ':' .. ARGV[a + 2]
      if redis.call('ZREM', KEYS[i] .. ':holds', member) == 1 then
        redis.call('HINCRBY', KEYS[i], 'reserved', -tonumber(ARGV[a + 2]))
      end
    end
    redis.call('HINCRBY', KEYS[i], 'spent', ARGV[a + 3])
  end
end
return 1
"""


class RedisLedger:
    """The ledger on Redis, shared by every instance; each operation is one Lua script."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str = "enclava:budget:",
        owns_client: bool = False,
        hold_ttl_s: float = DEFAULT_HOLD_TTL_S,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._owns_client = owns_client
        self._hold_ttl_ms = int(hold_ttl_s * 1000)
        self._reserve = client.register_script(_RESERVE)
        self._load = client.register_script(_LOAD)
        self._settle = client.register_script(_SETTLE)

    def _definitions_key(self, owner: Owner) -> str:
        return f"{self._prefix}owner:{owner_name(owner)}"

    def _generation_key(self, owner: Owner) -> str:
        return f"{self._prefix}gen:{owner_name(owner)}"

    def _counter_key(self, counter: str) -> str:
        return f"{self._prefix}c:{counter}"

    async def reserve(
        self, owners: Sequence[Owner], amount: int, starts: Mapping[str, int]
    ) -> Reservation | Outcome:
        call = self.reserve_call(owners, amount, starts)
        try:
            result = await self._reserve(keys=call.keys, args=call.args)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return call.outcome(result)

    def reserve_call(
        self, owners: Sequence[Owner], amount: int, starts: Mapping[str, int]
    ) -> ScriptCall[Reservation | Outcome]:
        """:meth:`reserve` as a script call, for a caller that runs it inside a script of its own."""
        keys = [self._definitions_key(o) for o in owners]
        hold = secrets.token_hex(8)
        args: list[int | str] = [
            amount,
            self._prefix + "c:",
            starts["daily"],
            starts["weekly"],
            starts["monthly"],
            starts["total"],
            hold,
            self._hold_ttl_ms,
        ]

        def outcome(result: Any) -> Reservation | Outcome:
            status = int(result[0])
            if status == 0:
                return Outcome.REFUSED
            if status == 2:
                return Outcome.NEED_LOAD
            charges = tuple(
                _charge(result[i].decode(), result[i + 1].decode())
                for i in range(1, len(result), 2)
            )
            return Reservation(charges, amount, hold)

        return ScriptCall(_RESERVE, keys, args, outcome)

    async def generations(self, owners: Sequence[Owner]) -> list[int]:
        try:
            values = await self._redis.mget([self._generation_key(o) for o in owners])
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return [int(v or 0) for v in values]

    async def load(self, owners: Sequence[OwnerLoad], counters: Sequence[CounterLoad]) -> None:
        keys: list[str] = []
        args: list[Any] = [len(owners), DEFINITIONS_TTL_S * 1000]
        for load in owners:
            keys += [self._generation_key(load.owner), self._definitions_key(load.owner)]
            args += [str(load.generation), orjson.dumps(load.definitions)]
        for counter in counters:
            keys.append(self._counter_key(counter.counter))
            args += [counter.spent, _new_epoch(), _COUNTER_TTL_S[counter.period] * 1000]
        try:
            await self._load(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def settle(self, items: Sequence[tuple[Reservation, int]]) -> None:
        keys: list[str] = []
        args: list[Any] = []
        for reservation, cost in items:
            for charge in reservation.charges:
                keys.append(self._counter_key(charge.counter))
                args += [charge.epoch, reservation.hold, reservation.amount_nanousd, cost]
        if not keys:
            return
        try:
            await self._settle(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def invalidate_owner(self, owner: Owner) -> None:
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.incr(self._generation_key(owner))
                pipe.delete(self._definitions_key(owner))
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc

    async def reserved(self, counters: Sequence[str]) -> list[int]:
        if not counters:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for counter in counters:
                    pipe.hget(self._counter_key(counter), "reserved")
                values = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise unavailable(exc) from exc
        return [int(v or 0) for v in values]

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()


# -- wiring ------------------------------------------------------------------------------------


def create_ledger(
    redis_url: str | None,
    database_url: str,
    cache: Cache | None = None,
    hold_ttl_s: float = DEFAULT_HOLD_TTL_S,
) -> tuple[BudgetLedger, Callable[[], Awaitable[None]]]:
    """The ledger for these settings and what releases it on shutdown.

    Redis when configured (on the cache's connection pool when the cache is on Redis);
    otherwise this process's memory ledger for ``database_url``."""
    if redis_url:
        if isinstance(cache, RedisCache):
            redis_ledger = RedisLedger(cache.client, hold_ttl_s=hold_ttl_s)
        else:
            client = aioredis.Redis.from_url(
                redis_url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
            )
            redis_ledger = RedisLedger(client, owns_client=True, hold_ttl_s=hold_ttl_s)
        return redis_ledger, redis_ledger.close
    memory_ledger = _acquire_memory_ledger(database_url)

    async def release() -> None:
        _release_memory_ledger(database_url)

    return memory_ledger, release


def get_ledger(state: Any) -> BudgetLedger:
    ledger: BudgetLedger = state.extras[STATE_KEY]
    return ledger
