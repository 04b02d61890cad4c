"""Admission: what a metered call passes before it reaches a provider.

Every call through the gateway is counted against its API key's rate limits and holds its
worst-case cost on the budgets that apply. Embedded, both are synchronous steps in process
memory: the authentication dependency counts the request and :func:`admit` reserves. On Redis
each is one Lua script, and sent one after the other they cost two round trips on the hot
path. So for the routes that hand their subject straight to the gateway (chat completions and
embeddings), the dependency leaves the count pending (``AuthSubject.pending``) and
:func:`admit` sends both scripts in one pipeline: one round trip (docs/decisions/0011).

The outcome is the one the two steps would have had in order:

- rate limit refused: 429 with the window's headers; a reservation the same pipeline made is
  released at once, so no budget holds money for a refused call;
- budget refused: 429 ``insufficient_quota``; the request stays counted, as before;
- budget definitions or counters not on Redis yet: they are loaded from the database and the
  reservation alone is retried (the request is not counted twice);
- Redis unreachable: 503, fail closed, as either step alone.

A request that fails before admission (malformed body, unknown model, missing scope) is still
counted: the routes call :func:`complete` on their error path.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from enclava.api_keys import lookup
from enclava.auth.subject import AuthSubject
from enclava.budgets import service as budgets
from enclava.budgets.ledger import Outcome, RedisLedger, Reservation, get_ledger, unavailable
from enclava.kit.cache import RedisCache
from enclava.ratelimit import service as ratelimit
from enclava.ratelimit.middleware import STATE_ATTRIBUTE as RATE_LIMIT_STATE
from enclava.state import AppState

logger = logging.getLogger(__name__)


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
    (the key or its owner changed). Nothing is held; the request must run again with the key
    read afresh. ``counted``: the request was already counted against its rate limits."""

    def __init__(self, counted: bool) -> None:
        super().__init__("the API key changed since this instance last read it")
        self.counted = counted


async def admit(state: AppState, subject: AuthSubject, amount_nanousd: int) -> Reservation:
    """Confirm the key and count the request if those are pending, and reserve
    ``amount_nanousd``; raises ``KeyChanged``, ``RateLimitError``, ``QuotaExceededError`` or
    ``ServiceUnavailableError``."""
    pending = subject.pending
    if pending is None or pending.done or not (pending.rate_limit or pending.key):
        return await budgets.reserve(state, subject, amount_nanousd)
    pending.done = True
    ledger = get_ledger(state)
    assert isinstance(ledger, RedisLedger) and isinstance(state.cache, RedisCache)
    count = None
    if pending.rate_limit:
        policy = ratelimit.policy_for(subject, state.settings)
        count = ratelimit.get_limiter(state).moving_windows_call(policy)
    hold = ledger.reserve_call(
        budgets.owners_of(subject), amount_nanousd, budgets.current_period_starts()
    )
    try:
        async with state.cache.client.pipeline(transaction=False) as pipe:
            if pending.key is not None:
                pipe.get(pending.key.name)
            if count is not None:
                count.queue(pipe)
            hold.queue(pipe)
            replies = list(await pipe.execute(raise_on_error=False))
    except (RedisError, OSError) as exc:
        raise ratelimit.store_unavailable(exc) from exc
    entry = replies.pop(0) if pending.key is not None else None
    counted = replies.pop(0) if count is not None else None
    held = replies.pop(0)

    reserved = None if isinstance(held, Exception) else hold.outcome(held)
    if isinstance(counted, Exception):
        await _release(ledger, reserved)
        raise ratelimit.store_unavailable(counted)
    refused, usages = count.outcome(counted) if count is not None else (None, [])
    if pending.key is not None and entry != pending.key.raw:
        await _release(ledger, reserved)
        lookup.near_cache(state).drop(pending.key.key_hash)
        counted_now = count is not None and refused is None
        if counted_now:
            setattr(pending.request_state, RATE_LIMIT_STATE, ratelimit.admitted_usage(None, usages))
        raise KeyChanged(counted=counted_now)
    if pending.key is not None and subject.api_key is not None:
        lookup.note_used(state, subject.api_key.id)  # the copy is confirmed
    if count is not None:
        try:
            usage = ratelimit.admitted_usage(refused, usages)
        except Exception:
            await _release(ledger, reserved)
            raise
        setattr(pending.request_state, RATE_LIMIT_STATE, usage)
    if isinstance(held, Exception):
        raise unavailable(held)
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
    if pending.rate_limit:
        usage = await ratelimit.enforce(state, subject)
        setattr(pending.request_state, RATE_LIMIT_STATE, usage)
    return True


async def confirm(state: AppState, subject: AuthSubject) -> None:
    """:func:`complete` for a call that is answered without a reservation (a cached answer):
    raises ``KeyChanged`` when the key's copy was stale."""
    if not await complete(state, subject):
        raise KeyChanged(counted=False)


async def _release(ledger: RedisLedger, reserved: Any) -> None:
    if not isinstance(reserved, Reservation) or not reserved.charges:
        return
    try:
        await ledger.settle([(reserved, 0)])
    except Exception:
        # The hold stays on the counters until their period ends; the call itself is refused.
        logger.exception("could not release the reservation of a refused call")
