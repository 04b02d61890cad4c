"""Settling a call: what it cost, and the settlement queued behind the answer.

Shared by the gateway's completions and embeddings (``enclava.llm.gateway``) and streamed
answers (``enclava.llm.streaming``). See docs/decisions/0010-settle-behind-the-response.md.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from enclava.auth.subject import AuthSubject
from enclava.budgets import service as budgets
from enclava.budgets.service import Reservation, UsageData
from enclava.llm.registry import ModelEntry, get_runtime
from enclava.state import AppState

logger = logging.getLogger("enclava.llm.gateway")

# Settlements written behind the response, per instance, before callers wait for theirs.
MAX_SETTLEMENTS_IN_FLIGHT = 2000


async def settle(
    state: AppState,
    subject: AuthSubject,
    reservation: Reservation | None,
    cost: int,
    usage: UsageData,
) -> None:
    """Queue the settlement without waiting for it: the response goes out while the
    settlement joins the next group commit, and a cancelled caller (client disconnect) cannot
    stop it. The reservation keeps the money held until then, so budgets stay exact. When more
    settlements are in flight than ``MAX_SETTLEMENTS_IN_FLIGHT`` (the database is slow or
    down), callers wait for theirs: memory stays bounded and callers slow down instead of the
    backlog growing."""
    queue = get_runtime(state).settlements
    item = budgets.Settlement(subject, reservation or Reservation((), 0), cost, usage)
    future = queue.submit(item)
    future.add_done_callback(functools.partial(_settled, usage, cost))
    if queue.in_flight > MAX_SETTLEMENTS_IN_FLIGHT:
        await asyncio.wait([future])


def _settled(
    usage: UsageData, cost: int, future: asyncio.Future[list[budgets.ThresholdCrossing]]
) -> None:
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None:
        # The reservation stays held, so the budget errs on the safe side; the row is lost.
        logger.error(
            "settlement failed",
            exc_info=exc,
            extra={"model": usage.model, "request_id": usage.request_id, "cost_nanousd": cost},
        )
        return
    crossings = future.result()
    if crossings:
        budgets.report_crossings(crossings)


def usage_tokens(usage: Any) -> tuple[int, int] | None:
    if not isinstance(usage, dict):
        return None
    prompt = usage.get("prompt_tokens")
    completion = usage.get("completion_tokens") or 0
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    return max(0, prompt), max(0, completion)


def charge(entry: ModelEntry, reservation: Reservation | None, prompt: int, completion: int) -> int:
    cost = entry.price.cost(prompt, completion)
    if reservation is not None and cost > reservation.amount_nanousd:
        # Only a misreporting upstream gets here: the bound makes it impossible otherwise.
        logger.warning(
            "usage above the reserved worst case; charge capped",
            extra={"model": entry.id, "cost_nanousd": cost, "reserved": reservation.amount_nanousd},
        )
        cost = reservation.amount_nanousd
    return cost


def elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
