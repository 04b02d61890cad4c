from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, Field, field_validator

Period = Literal["daily", "weekly", "monthly", "total"]
_MAX_USD = Decimal("1000000000")


def _check_thresholds(values: list[int] | None) -> list[int] | None:
    if values is None:
        return None
    return sorted(set(values))


class BudgetCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    limit_usd: Decimal = Field(ge=0, le=_MAX_USD, decimal_places=9)
    period: Period = "monthly"
    # Exactly one owner; neither means the caller's own user budget.
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    soft_thresholds: list[int] = Field(default_factory=list, max_length=10)
    is_active: bool = True

    @field_validator("soft_thresholds")
    @classmethod
    def _thresholds(cls, values: list[int]) -> list[int]:
        if any(v < 1 or v > 100 for v in values):
            raise ValueError("thresholds are percentages between 1 and 100")
        return _check_thresholds(values) or []


class BudgetUpdate(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    limit_usd: Decimal | None = Field(default=None, ge=0, le=_MAX_USD, decimal_places=9)
    period: Period | None = None
    soft_thresholds: list[int] | None = Field(default=None, max_length=10)
    is_active: bool | None = None

    @field_validator("soft_thresholds")
    @classmethod
    def _thresholds(cls, values: list[int] | None) -> list[int] | None:
        if values is not None and any(v < 1 or v > 100 for v in values):
            raise ValueError("thresholds are percentages between 1 and 100")
        return _check_thresholds(values)


class BudgetRead(BaseModel):
    id: uuid.UUID
    name: str
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    period: str
    limit_usd: str
    spent_usd: str
    reserved_usd: str
    remaining_usd: str
    soft_thresholds: list[int]
    is_active: bool
    period_started_at: datetime
    created_at: datetime
