from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from enclava.models.base import Base, IdMixin, JSONType, TimestampMixin


class Budget(IdMixin, TimestampMixin, Base):
    """A spending limit for a user or an API key over a period.

    Money is held in integer nano-dollars (1e-9 USD) so that reservations and settlements are
    exact sums; see docs/decisions/0002-money-and-budgets.md. ``spent_nanousd`` is what settled
    calls cost in the period that started at ``period_started_at``; what in-flight calls hold
    reserved lives in the budget ledger (docs/decisions/0009-budget-ledger.md).
    """

    __tablename__ = "budgets"
    __table_args__ = (
        CheckConstraint("user_id IS NOT NULL OR api_key_id IS NOT NULL", name="has_owner"),
        CheckConstraint("limit_nanousd >= 0", name="limit_non_negative"),
    )

    user_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(200))
    period: Mapped[str] = mapped_column(String(16), default="monthly")
    limit_nanousd: Mapped[int] = mapped_column(BigInteger)
    spent_nanousd: Mapped[int] = mapped_column(BigInteger, default=0)
    period_started_at: Mapped[datetime]
    # Percentages of the limit at which ``budget.threshold_exceeded`` fires, e.g. [50, 80, 95].
    soft_thresholds: Mapped[list[int]] = mapped_column(JSONType, default=list)
    notified_threshold: Mapped[int] = mapped_column(default=0)
    is_active: Mapped[bool] = mapped_column(default=True)
    # Who set the budget: a user may change budgets they created on their own keys, never
    # budgets an administrator put on them.
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
