"""The metered path: every LLM call in Enclava goes through ``chat_completion`` or ``embeddings``.

policy (scope, model allow-list, confidential-only) → worst-case budget reservation → provider
(retries with backoff before the first byte, fallbacks, circuit breaker) → settlement of the real
cost with its usage row. The public API, the dashboard, chatbots and workflows all call these
functions directly; see docs/gateway.md.

Callers must not hold an open database transaction across a call (on SQLite any transaction
holds the write lock): settlement runs in a short transaction of its own (the reservation is on
the budget ledger, not in the database), and streamed answers outlive the caller's request.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth.subject import AuthSubject
from enclava.budgets.service import Reservation, UsageData
from enclava.errors import (
    AppError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
)
from enclava.kit.logging import request_id_var
from enclava.llm import admission, pricing
from enclava.llm.metering import charge, elapsed_ms, settle, usage_tokens
from enclava.llm.registry import LLMRuntime, ModelEntry, get_runtime
from enclava.llm.resilience import ProviderError, backoff_delay
from enclava.llm.streaming import ChatStream
from enclava.state import AppState

__all__ = ["ChatResult", "ChatStream", "EmbeddingResult", "chat_completion", "embeddings"]

logger = logging.getLogger(__name__)

MAX_N = 16


# -- results ----------------------------------------------------------------------------------


@dataclass(slots=True)
class ChatResult:
    """A finished chat completion, its settlement queued (``body`` is the OpenAI
    ``chat.completion``)."""

    body: dict[str, Any]
    model: str
    provider: str
    prompt_tokens: int
    completion_tokens: int
    cost_nanousd: int
    cached: bool = False

    def headers(self) -> dict[str, str]:
        return cost_headers(
            self.model, self.provider, self.prompt_tokens, self.completion_tokens, self.cost_nanousd
        )


@dataclass(slots=True)
class EmbeddingResult:
    body: dict[str, Any]
    model: str
    provider: str
    prompt_tokens: int
    cost_nanousd: int

    def headers(self) -> dict[str, str]:
        return cost_headers(self.model, self.provider, self.prompt_tokens, 0, self.cost_nanousd)


def cost_headers(
    model: str, provider: str, prompt: int, completion: int, cost: int
) -> dict[str, str]:
    return {
        "x-enclava-model": model,
        "x-enclava-provider": provider,
        "x-enclava-prompt-tokens": str(prompt),
        "x-enclava-completion-tokens": str(completion),
        "x-enclava-cost-usd": pricing.usd(cost),
    }


# -- policy -----------------------------------------------------------------------------------


def _resolve(
    runtime: LLMRuntime,
    subject: AuthSubject,
    model_id: Any,
    kind: str,
    *,
    scope: str | None,
    confidential_only: bool,
) -> list[ModelEntry]:
    """The model and its usable fallbacks, in order; raises the client's error otherwise."""
    if scope is not None and not subject.has_scopes(scope):
        raise PermissionDeniedError(
            f"This API key lacks the scope: {scope}", code="insufficient_scope"
        )
    if not isinstance(model_id, str) or not model_id:
        raise BadRequestError("model is required", param="model", code="invalid_request")
    entry = runtime.models.get(model_id)
    if entry is None:
        raise NotFoundError(
            f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )
    if entry.kind != kind:
        raise BadRequestError(
            f"The model '{model_id}' is an {entry.kind} model",
            param="model",
            code="wrong_model_kind",
        )
    if not subject.may_use_model(model_id):
        raise PermissionDeniedError(
            f"This API key may not use the model '{model_id}'",
            param="model",
            code="model_not_allowed",
        )
    restricted = confidential_only or subject.confidential_only
    if restricted and not entry.confidential:
        raise PermissionDeniedError(
            f"The model '{model_id}' is not served by a confidential provider, and this caller is "
            "restricted to confidential providers",
            param="model",
            code="confidential_only",
        )
    chain = [entry]
    for fallback_id in entry.fallbacks:
        fallback = runtime.models.get(fallback_id)
        if (
            fallback is not None
            and fallback.kind == kind
            and subject.may_use_model(fallback_id)
            and (fallback.confidential or not restricted)
        ):
            chain.append(fallback)
    return chain


def _int_field(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise BadRequestError(
            f"{name} must be an integer {bounds}", param=name, code="invalid_request"
        )
    return value


def _validate_chat(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError(
            "messages must be a non-empty array", param="messages", code="invalid_request"
        )
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequestError(
                f"messages[{index}] must be an object with a role",
                param=f"messages.{index}",
                code="invalid_request",
            )
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequestError("stream must be a boolean", param="stream", code="invalid_request")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadRequestError(
            "stream_options must be an object", param="stream_options", code="invalid_request"
        )


# -- the upstream request ---------------------------------------------------------------------


def _upstream_body(
    body: dict[str, Any], entry: ModelEntry, requested_max: int | None, stream: bool
) -> dict[str, Any]:
    upstream = dict(body)
    upstream["model"] = entry.upstream_model
    limit = min(requested_max or entry.max_output_tokens, entry.max_output_tokens)
    upstream.pop("max_tokens", None)
    upstream.pop("max_completion_tokens", None)
    upstream[entry.max_tokens_param] = limit
    if stream:
        options = dict(upstream.get("stream_options") or {})
        options["include_usage"] = True  # the gateway always needs the usage to bill
        upstream["stream_options"] = options
    else:
        upstream.pop("stream_options", None)
    return upstream


def _worst_case(
    body: dict[str, Any], chain: list[ModelEntry], requested_max: int | None, n: int
) -> int:
    worst = 0
    for entry in chain:
        prompt = pricing.prompt_token_bound(body, entry.context_window)
        output = min(requested_max or entry.max_output_tokens, entry.max_output_tokens) * n
        worst = max(worst, entry.price.cost(prompt, output))
    return worst


async def _call_with_resilience(chain: list[ModelEntry], call: Any) -> tuple[ModelEntry, Any]:
    """Run ``call(entry)`` on the first candidate that answers; retries before the first byte.

    Raises the AppError to show the client when every candidate failed.
    """
    last: ProviderError | None = None
    for entry in chain:
        provider = entry.provider
        try:
            provider.check_ready()
        except ProviderError as exc:
            last = exc
            continue
        attempts = provider.config.max_retries + 1
        for attempt in range(1, attempts + 1):
            if not provider.breaker.allow():
                last = ProviderError(
                    f"provider {provider.name!r} circuit is open", code="circuit_open", status=503
                )
                break
            try:
                result = await call(entry)
            except ProviderError as exc:
                last = exc
                if exc.counts_as_failure:
                    provider.breaker.record_failure(exc.code)
                elif exc.retryable:
                    provider.breaker.release_trial()
                else:
                    provider.breaker.release_trial()
                    raise _client_error(exc) from None
                logger.warning(
                    "provider call failed",
                    extra={
                        "provider": provider.name,
                        "model": entry.id,
                        "code": exc.code,
                        "attempt": attempt,
                    },
                )
                if exc.retryable and attempt < attempts:
                    await asyncio.sleep(
                        backoff_delay(attempt, provider.config.retry_backoff_s, exc.retry_after_s)
                    )
                    continue
                break
            provider.breaker.record_success()
            return entry, result
    assert last is not None
    raise _client_error(last)


def _client_error(exc: ProviderError) -> AppError:
    status = exc.status
    if status in (400, 413, 422):
        return BadRequestError(exc.message, code=exc.code)
    if status == 429:
        return RateLimitError(
            "The upstream provider is rate limiting; retry later", code="upstream_rate_limited"
        )
    if exc.code in ("circuit_open", "manifest_mismatch", "manifest_unavailable"):
        return ServiceUnavailableError(exc.message, code=exc.code)
    if exc.code == "upstream_timeout":
        return UpstreamError("The upstream provider timed out", code=exc.code)
    return UpstreamError("The upstream provider failed to answer", code=exc.code)


# -- budget ------------------------------------------------------------------------------------


async def _reserve(
    state: AppState, subject: AuthSubject, amount: int, session: AsyncSession | None
) -> Reservation:
    if session is not None:
        # The reservation is on the budget ledger, not in the database: end the caller's
        # transaction now so none is held across the upstream call.
        await session.commit()
    return await admission.admit(state, subject, amount)


async def _settle_call(
    state: AppState,
    subject: AuthSubject,
    reservation: Reservation,
    entry: ModelEntry,
    cost: int,
    endpoint: str,
    started: float,
    request_id: str | None,
    *,
    status: str,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    error_code: str | None = None,
    streamed: bool = False,
) -> None:
    """Charge ``cost`` against the reservation (the rest is released) and record the call's
    usage row."""
    await settle(
        state,
        subject,
        reservation,
        cost,
        UsageData(
            endpoint=endpoint,
            model=entry.id,
            provider=entry.provider.name,
            status=status,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            latency_ms=elapsed_ms(started),
            streamed=streamed,
            error_code=error_code,
            request_id=request_id,
        ),
    )


async def _settle_unanswered(
    state: AppState,
    subject: AuthSubject,
    reservation: Reservation,
    entry: ModelEntry,
    exc: BaseException,
    endpoint: str,
    started: float,
    streamed: bool,
    request_id: str | None,
) -> None:
    """Settle a call the provider never answered: nothing is charged, the reservation is
    released, and its usage row records the error's code (``cancelled`` when the caller went
    away or the task was cancelled)."""
    code = exc.code if isinstance(exc, AppError) else None
    await _settle_call(
        state,
        subject,
        reservation,
        entry,
        0,
        endpoint,
        started,
        request_id,
        status="cancelled" if code is None else "error",
        error_code="cancelled" if code is None else code,
        streamed=streamed,
    )


# -- chat completions -------------------------------------------------------------------------


async def chat_completion(
    state: AppState,
    subject: AuthSubject,
    body: dict[str, Any],
    *,
    endpoint: str = "chat.completions",
    scope: str | None = "llm.chat",
    confidential_only: bool = False,
    session: AsyncSession | None = None,
) -> ChatResult | ChatStream:
    """Run one metered chat completion.

    ``body`` is an OpenAI chat-completions request (passed through to the provider, with the
    model mapped to its upstream name and an explicit output limit). ``scope`` is the scope the
    subject must hold (``None`` when the caller checked its own, e.g. ``chatbot.use``).
    ``confidential_only`` restricts this call (and its fallbacks) to confidential providers on
    top of the subject's own restriction. ``session``: the caller's open request session; the
    gateway COMMITS it before reserving and calling the provider (no transaction held across
    the upstream call).
    Without it, commit your own transaction before calling. Returns a ``ChatResult`` (its
    settlement queued and written behind the answer), or for ``stream: true`` a ``ChatStream``
    that settles when it ends or is closed. Raises ``AppError`` subclasses (OpenAI-shaped
    under /api/v1).
    """
    runtime = get_runtime(state)
    _validate_chat(body)
    chain = _resolve(
        runtime,
        subject,
        body.get("model"),
        "chat",
        scope=scope,
        confidential_only=confidential_only,
    )
    stream = bool(body.get("stream"))
    n = _int_field(body, "n", 1, MAX_N) or 1
    requested_max = _int_field(body, "max_completion_tokens", 1) or _int_field(
        body, "max_tokens", 1
    )
    request_id = request_id_var.get()
    started = time.perf_counter()

    cache_key = None
    primary = chain[0]
    if primary.response_cache_ttl_s and not stream and not primary.confidential:
        cache_key = _cache_key(subject, body)
        cached = await state.cache.get(cache_key)
        if isinstance(cached, dict):
            # A cached answer spends nothing, but the key is confirmed and the call counted.
            await admission.confirm(state, subject)
            if session is not None:
                await session.commit()
            await settle(
                state,
                subject,
                None,
                0,
                UsageData(
                    endpoint=endpoint,
                    model=primary.id,
                    provider=primary.provider.name,
                    status="cached",
                    request_id=request_id,
                ),
            )
            return ChatResult(cached, primary.id, primary.provider.name, 0, 0, 0, cached=True)

    worst = _worst_case(body, chain, requested_max, n)
    reservation = await _reserve(state, subject, worst, session)

    async def call(entry: ModelEntry) -> Any:
        upstream = _upstream_body(body, entry, requested_max, stream)
        if not stream:
            return await entry.provider.chat(upstream)
        iterator = await entry.provider.chat_stream(upstream)
        try:
            first = await iterator.__anext__()
        except StopAsyncIteration:
            raise ProviderError(
                "upstream sent an empty stream", code="upstream_disconnected", retryable=True
            ) from None
        except ProviderError as exc:
            # Nothing reached the client yet, so a broken start can be retried.
            exc.retryable = True
            raise
        return iterator, first

    try:
        entry, result = await _call_with_resilience(chain, call)
    except BaseException as exc:
        await _settle_unanswered(
            state, subject, reservation, primary, exc, endpoint, started, stream, request_id
        )
        raise

    if stream:
        iterator, first = result
        return ChatStream(
            state=state,
            subject=subject,
            entry=entry,
            reservation=reservation,
            upstream=iterator,
            first=first,
            include_usage=bool((body.get("stream_options") or {}).get("include_usage")),
            prompt_bytes=len(orjson.dumps(body.get("messages"))),
            endpoint=endpoint,
            started=started,
            request_id=request_id,
        )

    response: dict[str, Any] = result
    tokens = usage_tokens(response.get("usage"))
    estimated = tokens is None
    if tokens is None:
        text = sum(
            len(str((c.get("message") or {}).get("content") or ""))
            for c in response.get("choices") or []
            if isinstance(c, dict)
        )
        tokens = (
            pricing.estimate_tokens(len(orjson.dumps(body.get("messages")))),
            pricing.estimate_tokens(text),
        )
    prompt_tokens, completion_tokens = tokens
    cost = charge(entry, reservation, prompt_tokens, completion_tokens)
    response["model"] = entry.id
    usage_body = response.get("usage") if isinstance(response.get("usage"), dict) else None
    if usage_body is None:
        usage_body = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        response["usage"] = usage_body
    usage_body["cost_usd"] = pricing.usd(cost)
    await _settle_call(
        state,
        subject,
        reservation,
        entry,
        cost,
        endpoint,
        started,
        request_id,
        status="success",
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        error_code="usage_estimated" if estimated else None,
    )
    if cache_key is not None and entry is primary:
        await state.cache.set(cache_key, response, ttl_s=primary.response_cache_ttl_s)
    return ChatResult(
        response, entry.id, entry.provider.name, prompt_tokens, completion_tokens, cost
    )


def _cache_key(subject: AuthSubject, body: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"llm-response:{subject.user_id}:{digest}"


# -- embeddings -------------------------------------------------------------------------------


async def embeddings(
    state: AppState,
    subject: AuthSubject,
    body: dict[str, Any],
    *,
    endpoint: str = "embeddings",
    scope: str | None = "llm.embeddings",
    confidential_only: bool = False,
    session: AsyncSession | None = None,
) -> EmbeddingResult:
    """Run one metered embeddings call (OpenAI request: ``input`` string or list, optional
    ``encoding_format`` float or base64). Same policy, budget and settlement as chat."""
    runtime = get_runtime(state)
    chain = _resolve(
        runtime,
        subject,
        body.get("model"),
        "embedding",
        scope=scope,
        confidential_only=confidential_only,
    )
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw:
        inputs = [raw] if all(isinstance(x, int) and not isinstance(x, bool) for x in raw) else raw
    else:
        raise BadRequestError(
            "input must be a string or a non-empty array", param="input", code="invalid_request"
        )
    for item in inputs:
        valid_tokens = isinstance(item, list) and item and all(isinstance(x, int) for x in item)
        if not (isinstance(item, str) and item) and not valid_tokens:
            raise BadRequestError(
                "input items must be non-empty strings or token arrays",
                param="input",
                code="invalid_request",
            )
    if len(inputs) > 2048:
        raise BadRequestError(
            "input has more than 2048 items", param="input", code="invalid_request"
        )
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequestError(
            "encoding_format must be float or base64",
            param="encoding_format",
            code="invalid_request",
        )
    request_id = request_id_var.get()
    started = time.perf_counter()
    bound = pricing.embedding_token_bound(inputs)
    worst = max(e.price.cost(bound, 0) for e in chain)
    reservation = await _reserve(state, subject, worst, session)

    async def call(entry: ModelEntry) -> dict[str, Any]:
        upstream = dict(body)
        upstream["model"] = entry.upstream_model
        upstream["input"] = inputs if not isinstance(raw, str) else raw
        if entry.provider.type == "local":
            upstream["input"] = inputs
        return await entry.provider.embeddings(upstream)

    primary = chain[0]
    try:
        entry, response = await _call_with_resilience(chain, call)
    except BaseException as exc:
        await _settle_unanswered(
            state, subject, reservation, primary, exc, endpoint, started, False, request_id
        )
        raise
    tokens = usage_tokens(response.get("usage"))
    prompt_tokens = (
        tokens[0] if tokens else pricing.estimate_tokens(sum(len(str(i)) for i in inputs))
    )
    cost = charge(entry, reservation, prompt_tokens, 0)
    response["model"] = entry.id
    usage_body = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    usage_body.update(
        {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens,
            "cost_usd": pricing.usd(cost),
        }
    )
    response["usage"] = usage_body
    await _settle_call(
        state,
        subject,
        reservation,
        entry,
        cost,
        endpoint,
        started,
        request_id,
        status="success",
        prompt_tokens=prompt_tokens,
    )
    return EmbeddingResult(response, entry.id, entry.provider.name, prompt_tokens, cost)
