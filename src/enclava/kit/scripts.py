"""Lua script calls that a domain prepares and another part of the app sends to Redis.

A domain that keeps state on Redis (rate limits, the budget ledger) describes one of its
atomic steps as a :class:`ScriptCall`: the script, its keys and arguments, and how to read its
reply. It can run the call itself, or hand it to a caller that runs several domains' steps in
one script of its own (:func:`as_function`), one round trip (``enclava.llm.admission``).
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


def as_function(name: str, script: str) -> str:
    """``script`` as a Lua function ``name(KEYS, ARGV)``, for a script that runs several
    domains' steps as one atomic call: a ``return`` in the script returns from the function."""
    return f"local function {name}(KEYS, ARGV)\n{script}\nend\n"
