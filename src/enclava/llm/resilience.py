"""Per-provider circuit breaker and the retry policy for calls that have not started answering.

The breaker is per process: each instance learns about a failing provider from its own calls,
which needs no coordination and fails over within ``failure_threshold`` calls.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]


class ProviderError(Exception):
    """A provider call failed. ``retryable``: another attempt (or another provider) may succeed.

    ``status`` is the upstream HTTP status when there was one; ``counts_as_failure`` tells the
    circuit breaker whether the provider itself misbehaved (not the case for a 400).
    """

    def __init__(
        self,
        message: str,
        *,
        code: str,
        status: int | None = None,
        retryable: bool = False,
        counts_as_failure: bool = True,
        retry_after_s: float | None = None,
        upstream_body: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.retryable = retryable
        self.counts_as_failure = counts_as_failure
        self.retry_after_s = retry_after_s
        self.upstream_body = upstream_body


def classify_status(status: int) -> tuple[bool, bool]:
    """(retryable, counts_as_failure) for an upstream HTTP error status."""
    if status == 429:
        return True, False
    if status >= 500:
        return True, True
    return False, False


@dataclass
class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_s`` lets one trial
    call through (half-open) and closes again when it succeeds."""

    failure_threshold: int = 5
    reset_s: float = 30.0
    state: BreakerState = "closed"
    consecutive_failures: int = 0
    opened_at: float = 0.0
    trial_in_flight: bool = False
    last_error: str | None = None
    last_failure_at: float | None = field(default=None)

    def allow(self) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open" and time.monotonic() - self.opened_at >= self.reset_s:
            self.state = "half_open"
            self.trial_in_flight = False
        if self.state == "half_open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self.state = "closed"
        self.consecutive_failures = 0
        self.trial_in_flight = False

    def record_failure(self, error: str) -> None:
        self.consecutive_failures += 1
        self.last_error = error
        self.last_failure_at = time.time()
        if self.state == "half_open" or self.consecutive_failures >= self.failure_threshold:
            self.state = "open"
            self.opened_at = time.monotonic()
            self.trial_in_flight = False

    def release_trial(self) -> None:
        """A half-open trial ended without telling anything about the provider (e.g. a 400)."""
        self.trial_in_flight = False

    def snapshot(self) -> dict[str, object]:
        return {
            "state": self.state,
            "consecutive_failures": self.consecutive_failures,
            "last_error": self.last_error,
            "last_failure_at": self.last_failure_at,
        }


def backoff_delay(
    attempt: int, base_s: float, retry_after_s: float | None, cap_s: float = 8.0
) -> float:
    """Exponential backoff (attempt 1, 2, ...), honouring a short ``Retry-After``."""
    delay = min(cap_s, base_s * (2 ** (attempt - 1)))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, cap_s))
    return delay
