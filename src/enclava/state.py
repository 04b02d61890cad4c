"""The typed application state built in the lifespan and shared by every request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from enclava.config import Settings
from enclava.db import SessionFactory
from enclava.kit.cache import Cache


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    session_factory: SessionFactory
    cache: Cache
    # Domain services register what they hold open (provider clients, vector store, job runner)
    # here so that the lifespan closes them in reverse order.
    extras: dict[str, Any] = field(default_factory=dict)
    # Extra probes for ``/ready`` (vector store, providers); each raises or returns when healthy.
    readiness_checks: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
