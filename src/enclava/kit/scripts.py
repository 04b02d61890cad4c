"""Lua script calls that a domain prepares and another part of the app sends to Redis.

A domain that keeps state on Redis (rate limits, the budget ledger) describes one of its
atomic steps as a :class:`ScriptCall`: the script, its keys and arguments, and how to read its
reply. It can run the call itself, or hand it to a caller that sends several calls from
different domains in one pipeline, one round trip (``enclava.llm.admission``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ScriptCall(Generic[T]):
    script: str
    keys: list[str]
    args: list[Any]
    outcome: Callable[[Any], T]

    def queue(self, pipe: Any) -> None:
        """Add the call to a redis-py pipeline. ``EVAL`` with the script's text: Redis keeps
        the compiled script by its digest, and a pipeline never meets ``NOSCRIPT``."""
        pipe.execute_command("EVAL", self.script, len(self.keys), *self.keys, *self.args)
