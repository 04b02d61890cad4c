"""Sign-in lockout: failed attempts counted per account and per client IP.

Every attempt is counted *before* the password is checked, with one atomic increment in the
shared cache (Redis when configured), so a burst of concurrent guesses cannot slip past the
limit; a successful sign-in gives its attempt back. Accounts are counted by a digest of the
email whether or not the account exists, so a lockout reveals nothing about which emails are
registered. The window starts at the first counted attempt and lasts ``login_lockout_s``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from redis.exceptions import RedisError

from enclava.config import Settings
from enclava.errors import ServiceUnavailableError
from enclava.kit.cache import Cache


@dataclass(frozen=True, slots=True)
class Verdict:
    locked: bool
    # True for the attempt that crossed a limit (worth one audit row, not one per attempt).
    just_locked: bool = False


class LoginGuard:
    def __init__(self, cache: Cache, settings: Settings) -> None:
        self._cache = cache
        self._max_per_account = settings.login_max_failures_per_account
        self._max_per_ip = settings.login_max_failures_per_ip
        self.window_s = settings.login_lockout_s

    @staticmethod
    def _account_key(email: str) -> str:
        return "login:account:" + hashlib.sha256(email.encode()).hexdigest()[:32]

    @staticmethod
    def _ip_key(ip: str) -> str:
        return "login:ip:" + ip

    async def admit(self, email: str, ip: str | None) -> Verdict:
        """Count an attempt; ``locked`` means refuse it without checking the password."""
        try:
            account = await self._cache.incr(self._account_key(email), ttl_s=self.window_s)
            by_ip = await self._cache.incr(self._ip_key(ip), ttl_s=self.window_s) if ip else 0
        except (RedisError, OSError) as exc:
            raise _unavailable(exc)
        over_account = account > self._max_per_account
        over_ip = by_ip > self._max_per_ip
        return Verdict(
            locked=over_account or over_ip,
            just_locked=account == self._max_per_account + 1 or by_ip == self._max_per_ip + 1,
        )

    async def succeeded(self, email: str, ip: str | None) -> None:
        """A correct password: forget the account's failures and give the IP its attempt back."""
        try:
            await self._cache.delete(self._account_key(email))
            if ip:
                await self._cache.incr(self._ip_key(ip), -1, ttl_s=self.window_s)
        except (RedisError, OSError) as exc:
            raise _unavailable(exc)


def _unavailable(exc: Exception) -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "Sign-in is unavailable: the lockout store cannot be reached",
        code="lockout_store_unavailable",
    )
