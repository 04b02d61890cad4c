"""Query parameters for offset pagination, bounded so no backend sees an out-of-range integer."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

# Far beyond any real listing, and well inside a signed 64-bit integer (SQLite, PostgreSQL).
MAX_OFFSET = 1_000_000_000

Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Rows to skip")]
