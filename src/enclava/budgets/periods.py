"""Budget periods: where the current period of each kind started (UTC calendar)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

PERIODS = ("daily", "weekly", "monthly", "total")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def period_start(period: str, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - timedelta(days=day.weekday())  # Monday
    if period == "monthly":
        return day.replace(day=1)
    if period == "total":
        return _EPOCH
    raise ValueError(f"unknown budget period {period!r}")
