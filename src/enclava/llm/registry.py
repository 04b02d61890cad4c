"""The runtime of the LLM domain: providers (with their pooled clients) and the model table.

Built once in the lifespan from the providers configuration and held in
``AppState.extras["llm"]``; lookups on the request path are plain dict reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from enclava.budgets.service import SettlementQueue
from enclava.llm.config import LLMConfig, ModelConfig
from enclava.llm.local_embedder import LocalEmbedder
from enclava.llm.pricing import Price
from enclava.llm.providers.base import Provider
from enclava.llm.providers.http import HttpProvider
from enclava.llm.providers.local import LocalEmbeddingProvider
from enclava.llm.providers.privatemode import PrivatemodeProvider
from enclava.llm.providers.simulated import OWNED_BY as SIMULATED_OWNER
from enclava.llm.providers.simulated import SimulatedProvider
from enclava.state import AppState

logger = logging.getLogger(__name__)
STATE_KEY = "llm"
EMBEDDER_KEY = "local_embedder"


@dataclass(frozen=True, slots=True)
class ModelEntry:
    id: str
    kind: str
    provider: Provider
    upstream_model: str
    price: Price
    max_output_tokens: int
    context_window: int | None
    fallbacks: tuple[str, ...]
    max_tokens_param: str
    response_cache_ttl_s: int
    description: str | None
    config: ModelConfig

    @property
    def confidential(self) -> bool:
        return self.provider.confidential

    @property
    def simulated(self) -> bool:
        return self.provider.simulated

    @property
    def owned_by(self) -> str:
        return SIMULATED_OWNER if self.simulated else self.provider.name


class LLMRuntime:
    def __init__(
        self,
        config: LLMConfig,
        settlements: SettlementQueue,
        embedder: LocalEmbedder | None = None,
    ) -> None:
        self.config = config
        self.settlements = settlements
        self.created = int(time.time())
        self.embedder = embedder
        self.providers: dict[str, Provider] = {}
        for provider_config in config.providers:
            provider: Provider
            if provider_config.type == "privatemode":
                provider = PrivatemodeProvider(provider_config)
            elif provider_config.type == "openai":
                provider = HttpProvider(provider_config)
            elif provider_config.type == "simulated":
                names = [
                    m.upstream_model or m.id
                    for m in config.models
                    if m.provider == provider_config.name
                ]
                provider = SimulatedProvider(provider_config, names)
            else:
                if self.embedder is None:
                    self.embedder = LocalEmbedder()
                provider = LocalEmbeddingProvider(provider_config, self.embedder)
            self.providers[provider.name] = provider
        self.models: dict[str, ModelEntry] = {}
        for model in config.models:
            self.models[model.id] = ModelEntry(
                id=model.id,
                kind=model.kind,
                provider=self.providers[model.provider],
                upstream_model=model.upstream_model or model.id,
                price=Price.from_usd(model.input_price_per_million, model.output_price_per_million),
                max_output_tokens=model.max_output_tokens,
                context_window=model.context_window,
                fallbacks=tuple(model.fallbacks),
                max_tokens_param=model.max_tokens_param,
                response_cache_ttl_s=model.response_cache_ttl_s,
                description=model.description,
                config=model,
            )
        # Work that must finish even if the request that started it is cancelled (closing a
        # stream and settling it).
        self.pending: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        for provider in self.providers.values():
            await provider.start()

    async def flush(self) -> None:
        """Wait until every settlement this instance started is written (streams being closed
        settle when they finish closing)."""
        while self.pending:
            await asyncio.wait(list(self.pending))
        await self.settlements.drain()

    async def aclose(self) -> None:
        await asyncio.wait_for(self.flush(), timeout=10)
        for provider in self.providers.values():
            await provider.aclose()
        if self.embedder is not None:
            self.embedder.close()

    def keep(self, task: asyncio.Task[Any]) -> None:
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)


def get_runtime(state: AppState) -> LLMRuntime:
    runtime: LLMRuntime = state.extras[STATE_KEY]
    return runtime
