"""Model listing and provider status (the read side of the LLM domain)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from enclava.auth.subject import AuthSubject
from enclava.errors import NotFoundError
from enclava.llm import pricing
from enclava.llm.providers.base import Provider
from enclava.llm.registry import ModelEntry, get_runtime
from enclava.llm.resilience import ProviderError
from enclava.state import AppState

logger = logging.getLogger(__name__)
HEALTH_TTL_S = 30
FAILED_LIST_TTL_S = 60
_PROBE_TIMEOUT_S = 5.0


async def upstream_models(state: AppState, provider: Provider) -> list[str] | None:
    """The provider's own model names, cached (15 minutes by default; failures for a minute)."""
    key = f"llm-upstream-models:{provider.name}"
    cached = await state.cache.get(key)
    if isinstance(cached, dict):
        names = cached.get("models")
        return list(names) if isinstance(names, list) else None
    try:
        names = await asyncio.wait_for(provider.list_models(), _PROBE_TIMEOUT_S)
    except (ProviderError, TimeoutError):
        await state.cache.set(key, {"models": None}, ttl_s=FAILED_LIST_TTL_S)
        return None
    await state.cache.set(key, {"models": names}, ttl_s=state.settings.models_cache_ttl_s)
    return names


def _visible(entry: ModelEntry, subject: AuthSubject) -> bool:
    if not subject.may_use_model(entry.id):
        return False
    return entry.confidential or not subject.confidential_only


def _model_object(entry: ModelEntry, created: int, upstream: list[str] | None) -> dict[str, Any]:
    return {
        "id": entry.id,
        "object": "model",
        "created": created,
        "owned_by": entry.owned_by,
        "kind": entry.kind,
        "provider": entry.provider.name,
        "confidential": entry.confidential,
        "simulated": entry.simulated,
        "available": None if upstream is None else entry.upstream_model in upstream,
        "max_output_tokens": entry.max_output_tokens if entry.kind == "chat" else None,
        "pricing": {
            "currency": "USD",
            "input_per_million": pricing.usd(entry.price.input_per_million),
            "output_per_million": pricing.usd(entry.price.output_per_million),
        },
        "description": entry.description,
    }


async def list_models(state: AppState, subject: AuthSubject) -> dict[str, Any]:
    """Every configured model this subject may use, OpenAI ``list`` shape plus Enclava fields."""
    runtime = get_runtime(state)
    entries = [e for e in runtime.models.values() if _visible(e, subject)]
    providers = {e.provider.name: e.provider for e in entries}
    lists = dict(
        zip(
            providers,
            await asyncio.gather(*(upstream_models(state, p) for p in providers.values())),
            strict=True,
        )
    )
    return {
        "object": "list",
        "data": [_model_object(e, runtime.created, lists[e.provider.name]) for e in entries],
    }


async def get_model(state: AppState, subject: AuthSubject, model_id: str) -> dict[str, Any]:
    runtime = get_runtime(state)
    entry = runtime.models.get(model_id)
    if entry is None or not _visible(entry, subject):
        raise NotFoundError(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )
    upstream = await upstream_models(state, entry.provider)
    return _model_object(entry, runtime.created, upstream)


async def _health(state: AppState, provider: Provider) -> dict[str, Any]:
    key = f"llm-health:{provider.name}"
    cached = await state.cache.get(key)
    if isinstance(cached, dict):
        return cached
    started = time.perf_counter()
    try:
        names = await asyncio.wait_for(provider.list_models(), _PROBE_TIMEOUT_S)
        result: dict[str, Any] = {
            "reachable": True,
            "latency_ms": round((time.perf_counter() - started) * 1000, 1),
            "upstream_models": len(names),
            "error": None,
        }
    except (ProviderError, TimeoutError) as exc:
        code = exc.code if isinstance(exc, ProviderError) else "upstream_timeout"
        result = {"reachable": False, "latency_ms": None, "upstream_models": None, "error": code}
    result["checked_at"] = int(time.time())
    await state.cache.set(key, result, ttl_s=HEALTH_TTL_S)
    return result


async def provider_status(state: AppState, subject: AuthSubject) -> dict[str, Any]:
    """Health of every provider whose models the subject can see (circuit, reachability,
    confidential flag, privatemode manifest)."""
    runtime = get_runtime(state)
    visible = [e for e in runtime.models.values() if _visible(e, subject)]
    providers = {e.provider.name: e.provider for e in visible}
    healths = await asyncio.gather(*(_health(state, p) for p in providers.values()))
    result = []
    for provider, health in zip(providers.values(), healths, strict=True):
        refused = None
        try:
            provider.check_ready()
        except ProviderError as exc:
            refused = exc.code
        breaker = provider.breaker.snapshot()
        if refused or breaker["state"] == "open" or not health["reachable"]:
            status = "unavailable"
        elif breaker["state"] == "half_open" or breaker["consecutive_failures"]:
            status = "degraded"
        else:
            status = "ok"
        result.append(
            {
                "name": provider.name,
                "type": provider.type,
                "status": status,
                "confidential": provider.confidential,
                "simulated": provider.simulated,
                "models": [e.id for e in visible if e.provider is provider],
                "circuit": breaker,
                "health": health,
                "refused": refused,
                **provider.status_details(),
            }
        )
    return {"object": "list", "data": result}
