"""Fixtures for the security suite: apps with overridden settings, and the OpenAPI routes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclava.app import create_app
from enclava.config import Settings

DATA = Path(__file__).parent / "data"

AppClient = Callable[..., AbstractAsyncContextManager[tuple[Any, httpx.AsyncClient]]]


@pytest.fixture
def app_client(settings: Settings) -> AppClient:
    """``async with app_client(threat_detection="log") as (app, client)``: the real app on the
    test database with some settings changed."""

    @asynccontextmanager
    async def make(
        base_url: str = "http://testserver", **overrides: Any
    ) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
        application = create_app(settings.model_copy(update=overrides))
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
                yield application, http

    return make
