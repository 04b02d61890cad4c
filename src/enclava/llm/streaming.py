"""Streamed chat completions: ``ChatStream``, settled exactly once however the stream ends."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from enclava.auth.subject import AuthSubject
from enclava.budgets.service import Reservation, UsageData
from enclava.errors import UpstreamError
from enclava.llm import pricing
from enclava.llm.metering import charge, elapsed_ms, settle, usage_tokens
from enclava.llm.registry import ModelEntry, get_runtime
from enclava.llm.resilience import ProviderError
from enclava.state import AppState


class ChatStream:
    """A streamed chat completion: iterate OpenAI ``chat.completion.chunk`` dicts.

    The upstream's model name is replaced by the served model's id; the final usage chunk (only
    when the request asked for ``stream_options.include_usage``) carries ``usage.cost_usd``. The
    call is settled exactly once: when the stream ends, breaks (``__anext__`` then raises an
    ``AppError`` after settling what was delivered) or is closed early with ``aclose()`` (client
    disconnect). Use ``async with`` or call ``aclose()`` when not iterating to the end.
    """

    def __init__(
        self,
        *,
        state: AppState,
        subject: AuthSubject,
        entry: ModelEntry,
        reservation: Reservation,
        upstream: AsyncIterator[dict[str, Any]],
        first: dict[str, Any],
        include_usage: bool,
        prompt_bytes: int,
        endpoint: str,
        started: float,
        request_id: str | None,
    ) -> None:
        self.state = state
        self.subject = subject
        self.entry = entry
        self.model = entry.id
        self.provider = entry.provider.name
        self.reservation = reservation
        self._upstream = upstream
        self._first: dict[str, Any] | None = first
        self.include_usage = include_usage
        self._prompt_bytes = prompt_bytes
        self._endpoint = endpoint
        self._started = started
        self._request_id = request_id
        self._usage: tuple[int, int] | None = None
        self._delivered_bytes = 0
        self._delivered_chunks = 0
        self._sent_usage = False
        self._settled = False
        self._finished = False
        self.cost_nanousd = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __aiter__(self) -> ChatStream:
        return self

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._finished:
                raise StopAsyncIteration
            if self._first is not None:
                chunk, self._first = self._first, None
            else:
                try:
                    chunk = await self._upstream.__anext__()
                except StopAsyncIteration:
                    return await self._end()
                except ProviderError as exc:
                    self._finished = True
                    if exc.counts_as_failure:
                        self.entry.provider.breaker.record_failure(exc.code)
                    await self._finish("error", exc.code)
                    raise UpstreamError(
                        "The upstream provider broke off the stream", code=exc.code
                    ) from None
            out = self._process(chunk)
            if out is not None:
                return out

    def _process(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        chunk["model"] = self.model
        usage = chunk.get("usage")
        if usage is not None:
            tokens = usage_tokens(usage)
            if tokens is not None:
                self._usage = tokens
            if self.include_usage and isinstance(usage, dict) and tokens is not None:
                self._sent_usage = True
                usage["cost_usd"] = pricing.usd(charge(self.entry, self.reservation, *tokens))
            else:
                del chunk["usage"]
                if not chunk.get("choices"):
                    return None
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            size = len(delta.get("content") or "") + len(delta.get("reasoning_content") or "")
            for call in delta.get("tool_calls") or ():
                if isinstance(call, dict):
                    size += len(str((call.get("function") or {}).get("arguments") or ""))
            if size:
                self._delivered_bytes += size
                self._delivered_chunks += 1
        return chunk

    def _estimate(self) -> tuple[int, int]:
        if self._usage is not None:
            return self._usage
        completion = max(self._delivered_chunks, pricing.estimate_tokens(self._delivered_bytes))
        return pricing.estimate_tokens(self._prompt_bytes), completion

    async def _end(self) -> dict[str, Any]:
        self._finished = True
        estimated = self._usage is None
        await self._finish("success", "usage_estimated" if estimated else None)
        if self.include_usage and not self._sent_usage:
            # The upstream sent no usage: the client still gets the (estimated) final chunk.
            return {
                "id": "chatcmpl-enclava",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": self.model,
                "choices": [],
                "usage": {
                    "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens,
                    "total_tokens": self.prompt_tokens + self.completion_tokens,
                    "cost_usd": pricing.usd(self.cost_nanousd),
                },
            }
        raise StopAsyncIteration

    async def _finish(self, status: str, error_code: str | None) -> None:
        if self._settled:
            return
        self._settled = True
        self.prompt_tokens, self.completion_tokens = self._estimate()
        self.cost_nanousd = charge(
            self.entry, self.reservation, self.prompt_tokens, self.completion_tokens
        )
        usage = UsageData(
            endpoint=self._endpoint,
            model=self.model,
            provider=self.provider,
            status=status,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_ms=elapsed_ms(self._started),
            streamed=True,
            error_code=error_code,
            request_id=self._request_id,
        )
        await settle(self.state, self.subject, self.reservation, self.cost_nanousd, usage)

    async def aclose(self) -> None:
        """Stop early (e.g. the client went away): close the upstream and settle what was
        delivered. Safe to call more than once and from a cancelled task."""
        if self._settled:
            return
        self._finished = True
        runtime = get_runtime(self.state)

        async def close_and_settle() -> None:
            aclose = getattr(self._upstream, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(ProviderError, RuntimeError):
                    await aclose()
            await self._finish("cancelled", "client_disconnected")

        task = asyncio.get_running_loop().create_task(close_and_settle())
        runtime.keep(task)
        await asyncio.shield(task)
