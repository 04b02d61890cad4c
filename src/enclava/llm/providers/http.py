"""OpenAI-compatible upstreams over HTTP (vLLM, Ollama, llama.cpp, OpenAI, privatemode-proxy).

One pooled ``aiohttp`` session per provider, opened in the lifespan. Bodies are (de)serialised
with orjson and passed through untouched apart from what the gateway set (model, max tokens,
stream options).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from enclava.llm.config import ProviderConfig
from enclava.llm.providers.base import Provider
from enclava.llm.resilience import ProviderError, classify_status

_READ_BUFFER = 4 * 1024 * 1024  # SSE lines with logprobs can be long


def _error_message(status: int, raw: bytes) -> tuple[str, dict[str, Any] | None]:
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return f"upstream answered HTTP {status}", None
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        error = payload["error"]
        return str(error.get("message") or f"upstream answered HTTP {status}"), error
    return f"upstream answered HTTP {status}", None


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def status_error(status: int, raw: bytes, headers: Any) -> ProviderError:
    retryable, counts = classify_status(status)
    message, upstream = _error_message(status, raw)
    code = "upstream_rate_limited" if status == 429 else f"upstream_http_{status}"
    return ProviderError(
        message,
        code=code,
        status=status,
        retryable=retryable,
        counts_as_failure=counts,
        retry_after_s=_retry_after(headers),
        upstream_body=upstream,
    )


def transport_error(exc: BaseException) -> ProviderError:
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return ProviderError("upstream timed out", code="upstream_timeout")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ProviderError("upstream unreachable", code="upstream_unreachable", retryable=True)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return ProviderError(
            "upstream closed the connection", code="upstream_disconnected", retryable=True
        )
    return ProviderError("upstream connection failed", code="upstream_disconnected")


class HttpProvider(Provider):
    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        assert config.base_url is not None
        self.base_url = config.base_url
        self._session: aiohttp.ClientSession | None = None
        headers = {"content-type": "application/json", **config.headers}
        if config.api_key is not None and config.api_key.get_secret_value():
            headers["authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self._headers = headers

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.config.max_connections, keepalive_timeout=30, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self.config.connect_timeout_s,
                sock_read=self.config.timeout_s,
            ),
            read_bufsize=_READ_BUFFER,
            auto_decompress=True,
            raise_for_status=False,
            skip_auto_headers=("User-Agent",),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise ProviderError("provider is not started", code="provider_not_started")
        return self._session

    async def _post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            async with self.session.post(self.base_url + path, data=orjson.dumps(body)) as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise status_error(resp.status, raw, resp.headers)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc) from None
        try:
            payload = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise ProviderError("upstream sent invalid JSON", code="upstream_invalid") from None
        if not isinstance(payload, dict):
            raise ProviderError("upstream sent invalid JSON", code="upstream_invalid")
        return payload

    async def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json("/chat/completions", body)

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json("/embeddings", body)

    async def chat_stream(self, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        try:
            resp = await self.session.post(
                self.base_url + "/chat/completions", data=orjson.dumps(body)
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc) from None
        if resp.status != 200:
            try:
                raw = await resp.read()
            except (TimeoutError, aiohttp.ClientError, OSError):
                raw = b""
            finally:
                resp.release()
            raise status_error(resp.status, raw, resp.headers)
        return _sse_chunks(resp)

    async def list_models(self) -> list[str]:
        try:
            async with self.session.get(self.base_url + "/models") as resp:
                raw = await resp.read()
                if resp.status != 200:
                    raise status_error(resp.status, raw, resp.headers)
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise transport_error(exc) from None
        try:
            payload = orjson.loads(raw)
            return [str(item["id"]) for item in payload.get("data", [])]
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError):
            raise ProviderError(
                "upstream sent an invalid model list", code="upstream_invalid"
            ) from None


async def _sse_chunks(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Parse ``data:`` lines into dicts until ``[DONE]``; a break before it raises."""
    done = False
    try:
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                done = True
                break
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise ProviderError(
                    "upstream sent an invalid stream chunk", code="upstream_invalid"
                ) from None
            if isinstance(chunk, dict) and isinstance(chunk.get("error"), dict):
                raise ProviderError(
                    str(chunk["error"].get("message") or "upstream stream error"),
                    code="upstream_stream_error",
                    upstream_body=chunk["error"],
                )
            yield chunk
        if not done:
            raise ProviderError("upstream ended the stream early", code="upstream_disconnected")
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        error = transport_error(exc)
        raise ProviderError(error.message, code=error.code) from None
    finally:
        resp.release() if done else resp.close()
