"""Admission: what a metered call passes before it reaches a provider.

Every call through the gateway is counted against its API key's rate limits and holds its
worst-case cost on the budgets that apply. Embedded, both are synchronous steps in process
memory: the authentication dependency counts the request and :func:`admit` reserves. On Redis
the key's cache entry, the count and the reservation would each be a round trip. So for the
routes that hand their subject straight to the gateway (chat completions and embeddings), the
dependency takes the key from the instance's copy of its cache entry and leaves the count
pending (``AuthSubject.pending``), and :func:`admit` runs all three as one Lua script: one round
trip, and atomic (docs/decisions/0011-one-round-trip-admission.md).

The script confirms the copy is still the shared entry, then counts, then reserves:

- the copy is stale (the key or its owner changed): nothing is counted or held, and the route
  runs the request again with the key read afresh (``KeyChanged``);
- rate limit refused: 429 with the window's headers; nothing is held;
- budget refused: 429 ``insufficient_quota``; the request stays counted, as before;
- budget definitions or counters not on Redis yet: they are loaded from the database and the
  reservation alone is retried (the request is not counted twice);
- Redis unreachable: 503, fail closed.

A request that fails before admission (malformed body, unknown model, missing scope, a cached
answer) confirms its key and is counted on that path: the routes call :func:`complete`.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from enclava.api_keys import lookup
from enclava.auth.subject import AuthSubject
from enclava.budgets import service as budgets
from enclava.budgets.ledger import Outcome, RedisLedger, Reservation, get_ledger
from enclava.kit.cache import RedisCache
from enclava.kit.scripts import ScriptCall, as_function
from enclava.ratelimit import service as ratelimit
from enclava.ratelimit.middleware import STATE_ATTRIBUTE as RATE_LIMIT_STATE
from enclava.state import AppState


def defers_rate_limit(state: AppState) -> bool:
    """Whether the rate-limit count can wait for :func:`admit` (both steps on one Redis)."""
    return (
        state.settings.rate_limit_enabled
        and isinstance(state.cache, RedisCache)
        and ratelimit.get_limiter(state).counts_in_one_script
        and isinstance(get_ledger(state), RedisLedger)
    )


class KeyChanged(Exception):
    """The key's shared cache entry is no longer the copy this instance authenticated from
    (the key or its owner changed). Nothing was counted or held; the request must run again
    with the key read afresh."""

    def __init__(self) -> None:
        super().__init__("the API key changed since this instance last read it")


# One script for the whole admission, so it is atomic as well as one round trip. The two
# domains' scripts become functions (their KEYS and ARGV are parameters); this body runs them.
# KEYS: the key's cache entry (when confirming a copy), the count's keys, the hold's keys.
# ARGV: the number of the count's keys and arguments and of the hold's, the copy's bytes (''
# when there is none to confirm), then the count's and the hold's arguments.
# Returns {'changed'} (nothing done), {'limited', count reply} (nothing counted or held), or
# {'ok', count reply, hold reply}.
_ADMIT_BODY = """
local function part(list, first, n)
  local out = {}
  for i = 1, n do out[i] = list[first + i - 1] end
  return out
end
local count_keys, count_args = tonumber(ARGV[1]), tonumber(ARGV[2])
local hold_keys, hold_args = tonumber(ARGV[3]), tonumber(ARGV[4])
local k, a = 1, 6
if ARGV[5] ~= '' then
  if redis.call('GET', KEYS[1]) ~= ARGV[5] then return {'changed'} end
  k = 2
end
local counted = count(part(KEYS, k, count_keys), part(ARGV, a, count_args))
if tonumber(counted[1]) ~= 0 then return {'limited', counted} end
local held = hold(part(KEYS, k + count_keys, hold_keys), part(ARGV, a + count_args, hold_args))
return {'ok', counted, held}
"""
_SCRIPT_KEY = "admission_script"


def _script(state: AppState, count: ScriptCall[Any], hold: ScriptCall[Any]) -> Any:
    """The admission script registered on the app's Redis client (EVALSHA, loaded again by
    redis-py after a Redis restart)."""
    script = state.extras.get(_SCRIPT_KEY)
    if script is None:
        assert isinstance(state.cache, RedisCache)
        text = as_function("count", count.script) + as_function("hold", hold.script) + _ADMIT_BODY
        script = state.extras[_SCRIPT_KEY] = state.cache.client.register_script(text)
    return script


async def admit(state: AppState, subject: AuthSubject, amount_nanousd: int) -> Reservation:
    """Confirm the key and count the request if those are pending, and reserve
    ``amount_nanousd``; raises ``KeyChanged``, ``RateLimitError``, ``QuotaExceededError`` or
    ``ServiceUnavailableError``."""
    pending = subject.pending
    if pending is None or pending.done:
        return await budgets.reserve(state, subject, amount_nanousd)
    pending.done = True
    ledger = get_ledger(state)
    assert isinstance(ledger, RedisLedger) and isinstance(state.cache, RedisCache)
    limiter = ratelimit.get_limiter(state)
    count = limiter.moving_windows_call(ratelimit.policy_for(subject, state.settings))
    hold = ledger.reserve_call(
        budgets.owners_of(subject), amount_nanousd, budgets.current_period_starts()
    )
    confirming = [pending.key.name] if pending.key is not None else []
    keys = [*confirming, *count.keys, *hold.keys]
    args: list[Any] = [
        len(count.keys),
        len(count.args),
        len(hold.keys),
        len(hold.args),
        pending.key.raw if pending.key is not None else "",
        *count.args,
        *hold.args,
    ]
    try:
        reply = await _script(state, count, hold)(keys=keys, args=args)
    except (RedisError, OSError) as exc:
        raise ratelimit.store_unavailable(exc) from exc
    verdict = bytes(reply[0])
    if verdict == b"changed":
        assert pending.key is not None
        lookup.near_cache(state).drop(pending.key.key_hash)
        raise KeyChanged
    if pending.key is not None and subject.api_key is not None:
        lookup.note_used(state, subject.api_key.id)  # the copy is confirmed
    usage = ratelimit.admitted_usage(*count.outcome(reply[1]))  # 429 when "limited"
    setattr(pending.request_state, RATE_LIMIT_STATE, usage)
    reserved = hold.outcome(reply[2])
    if isinstance(reserved, Reservation):
        return reserved
    if reserved is Outcome.REFUSED:
        raise budgets.quota_exceeded()
    # Outcome.NEED_LOAD: nothing was reserved; load the budgets and reserve as usual.
    return await budgets.reserve(state, subject, amount_nanousd)


async def complete(state: AppState, subject: AuthSubject) -> bool:
    """Run what is still pending for a request that ends before admission (an error path), so
    it is counted against its rate limits like any other request. False when the key's copy
    turned out stale (nothing counted): the caller decides on the key read afresh instead."""
    pending = subject.pending
    if pending is None or pending.done:
        return True
    pending.done = True
    if pending.key is not None:
        assert isinstance(state.cache, RedisCache)
        try:
            current = await state.cache.client.get(pending.key.name)
        except (RedisError, OSError) as exc:
            raise lookup.store_unavailable(exc) from exc
        if current != pending.key.raw:
            lookup.near_cache(state).drop(pending.key.key_hash)
            return False
        if subject.api_key is not None:
            lookup.note_used(state, subject.api_key.id)
    usage = await ratelimit.enforce(state, subject)
    setattr(pending.request_state, RATE_LIMIT_STATE, usage)
    return True


async def confirm(state: AppState, subject: AuthSubject) -> None:
    """:func:`complete` for a call that is answered without a reservation (a cached answer):
    raises ``KeyChanged`` when the key's copy was stale."""
    if not await complete(state, subject):
        raise KeyChanged
