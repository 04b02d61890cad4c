"""The application factory's process-level behaviour."""

from __future__ import annotations

import gc

from enclava.app import create_app
from enclava.config import Settings


async def test_the_served_app_freezes_what_it_loaded_at_startup(settings: Settings) -> None:
    """``enclava serve`` builds the app with ``freeze_startup_objects``: once started, the
    objects loaded at startup sit in the collector's permanent generation, so full collections
    under load do not walk them. Apps built for tests (many per process) do not freeze."""
    assert gc.get_freeze_count() == 0
    plain = create_app(settings)
    async with plain.router.lifespan_context(plain):
        assert gc.get_freeze_count() == 0
    served = create_app(settings, freeze_startup_objects=True)
    try:
        async with served.router.lifespan_context(served):
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
