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


async def admit(state: AppState, subject: AuthSubject, amount_nanousd: int) -> Reservation:
    """Count the request if its count is pending and reserve ``amount_nanousd``; raises
    ``RateLimitError``, ``QuotaExceededError`` or ``ServiceUnavailableError``."""
    pending = subject.pending
    if pending is None or pending.done or not pending.rate_limit:
        return await budgets.reserve(state, subject, amount_nanousd)
    pending.done = True
    ledger = get_ledger(state)
    assert isinstance(ledger, RedisLedger) and isinstance(state.cache, RedisCache)
    count = ratelimit.get_limiter(state).moving_windows_call(
        ratelimit.policy_for(subject, state.settings)
    )
    hold = ledger.reserve_call(
        budgets.owners_of(subject), amount_nanousd, budgets.current_period_starts()
    )
    try:
        async with state.cache.client.pipeline(transaction=False) as pipe:
            count.queue(pipe)
            hold.queue(pipe)
            counted, held = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        raise ratelimit.store_unavailable(exc) from exc

    reserved = None if isinstance(held, Exception) else hold.outcome(held)
    if isinstance(counted, Exception):
        await _release(ledger, reserved)
        raise ratelimit.store_unavailable(counted)
    try:
        usage = ratelimit.admitted_usage(*count.outcome(counted))
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


async def complete(state: AppState, subject: AuthSubject) -> None:
    """Run what is still pending for a request that ends before admission (an error path):
    it is counted against its rate limits like any other request."""
    pending = subject.pending
    if pending is None or pending.done:
        return
    pending.done = True
    if pending.rate_limit:
        usage = await ratelimit.enforce(state, subject)
        setattr(pending.request_state, RATE_LIMIT_STATE, usage)


async def _release(ledger: RedisLedger, reserved: Any) -> None:
    if not isinstance(reserved, Reservation) or not reserved.charges:
        return
    try:
        await ledger.settle([(reserved, 0)])
    except Exception:
        # The hold stays on the counters until their period ends; the call itself is refused.
        logger.exception("could not release the reservation of a refused call")
