"""The provider interface the gateway calls: OpenAI-shaped dicts in and out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from enclava.llm.config import ProviderConfig
from enclava.llm.resilience import CircuitBreaker, ProviderError


class Provider(ABC):
    """One upstream. Methods raise ``ProviderError``; streams raise it before their first chunk
    when the call failed (so it can be retried) and while iterating when it broke mid-way."""

    simulated = False

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.name = config.name
        self.type = config.type
        self.confidential = config.is_confidential
        self.breaker = CircuitBreaker(config.circuit_failure_threshold, config.circuit_reset_s)

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open pooled resources (called once in the lifespan)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Close pooled resources."""

    def check_ready(self) -> None:  # noqa: B027 - optional hook
        """Raise ``ProviderError`` when the provider must not be used now (e.g. manifest pin)."""

    @abstractmethod
    async def chat(self, body: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Open the stream (errors before the first chunk raise here), then iterate chunks."""

    @abstractmethod
    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]: ...

    @abstractmethod
    async def list_models(self) -> list[str]:
        """The upstream's own model names (for availability in /models and health)."""

    def status_details(self) -> dict[str, Any]:
        """Provider-specific facts for /llm/providers/status."""
        return {}


def unsupported(provider: str, what: str) -> ProviderError:
    return ProviderError(
        f"provider {provider!r} does not support {what}",
        code="unsupported",
        status=400,
        counts_as_failure=False,
    )
