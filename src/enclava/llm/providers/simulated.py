"""A provider served in-process by the mock upstream's simulator (no real model, no port).

It is what a fresh install runs with: its models are named ``simulated-*`` and listed as owned
by ``enclava-simulated``, so nobody mistakes the placeholder answers for a model's output.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from enclava.llm.config import ProviderConfig
from enclava.llm.providers.base import Provider
from enclava.llm.resilience import ProviderError, classify_status
from enclava.testing.mock_upstream import MockDrop, MockFault, Simulator, SimulatorConfig

OWNED_BY = "enclava-simulated"


def _fault(fault: MockFault) -> ProviderError:
    retryable, counts = classify_status(fault.status)
    return ProviderError(
        fault.message,
        code="upstream_rate_limited" if fault.status == 429 else f"upstream_http_{fault.status}",
        status=fault.status,
        retryable=retryable,
        counts_as_failure=counts,
        retry_after_s=fault.retry_after,
    )


class SimulatedProvider(Provider):
    simulated = True

    def __init__(self, config: ProviderConfig, models: list[str]) -> None:
        super().__init__(config)
        settings: dict[str, Any] = {"models": models, "owned_by": OWNED_BY, "record_requests": 0}
        settings.update(config.simulator)
        self.simulator = Simulator(SimulatorConfig(**settings))

    async def _prepare(self, body: dict[str, Any]) -> Any:
        model = str(body.get("model", ""))
        directives = self.simulator.directives(model, None)
        try:
            await self.simulator.before_response(model, directives)
        except MockFault as fault:
            raise _fault(fault) from None
        except MockDrop:
            raise ProviderError(
                "upstream closed the connection", code="upstream_disconnected"
            ) from None
        if directives.drop_after == 0 and not body.get("stream"):
            raise ProviderError("upstream closed the connection", code="upstream_disconnected")
        return directives

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        directives = await self._prepare(body)
        return self.simulator.chat(body, directives)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        directives = await self._prepare(body)
        return self._chunks(body, directives)

    async def _chunks(self, body: dict[str, Any], directives: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            async for chunk in self.simulator.chat_stream(body, directives):
                yield chunk
        except MockDrop:
            raise ProviderError(
                "upstream closed the connection", code="upstream_disconnected"
            ) from None

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        directives = await self._prepare(body)
        return self.simulator.embeddings(body, directives)

    async def list_models(self) -> list[str]:
        return list(self.simulator.config.models)

    def status_details(self) -> dict[str, Any]:
        return {"note": "simulated provider: placeholder answers, no real model"}
