"""An OpenAI-compatible simulator for tests, benchmarks and the offline demo.

``Simulator`` holds the logic (deterministic completions, embeddings, usage and faults) and is
used in-process by the ``simulated`` provider; ``create_app`` wraps it in a small raw-ASGI HTTP
server (``enclava mock-upstream``), fast enough to serve as the "direct" baseline of the
gateway benchmark.

Faults and behaviour are chosen per request by directives, from (in order of precedence) the
server's scripted queue (``POST /_mock/script``), the ``X-Mock-Directives`` header and the
model name (``model@status=500x2@latency=20``). Directives:

- ``status=N`` (or ``status=NxK``: only the first K requests with this model name fail, then the
  model answers normally, so a test can script "5xx then success"); 429s carry ``Retry-After: 0``
- ``latency=MS`` before the response starts, ``jitter=MS`` spreads it uniformly over
  latency ± jitter (never below 0); ``chunk_latency=MS`` between stream chunks
- ``timeout`` (never answers within any sane client timeout)
- ``drop=K`` (streaming: close the connection after K chunks, without usage or ``[DONE]``;
  non-streaming: close the connection before answering)
- ``tokens=N`` completion tokens (capped by ``max_tokens``); ``no_usage`` omits usage

Control endpoints: ``GET/POST /_mock/config`` (defaults), ``POST /_mock/script`` (a list of
directive strings consumed one per request, optional ``model`` filter), ``GET /_mock/stats``
(request counts and the last request bodies, for assertions), ``POST /_mock/reset``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import struct
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

WORDS = [
    "This",
    "is",
    "a",
    "simulated",
    "response",
    "from",
    "the",
    "Enclava",
    "mock",
    "upstream;",
    "it",
    "carries",
    "no",
    "model",
    "output",
    "and",
    "exists",
    "so",
    "that",
    "clients,",
    "budgets",
    "and",
    "dashboards",
    "can",
    "be",
    "exercised",
    "offline.",
]
TIMEOUT_SLEEP_S = 3600.0


class MockFault(Exception):
    """The simulator answers with an HTTP error (``status``) instead of a completion."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        kind = {429: "rate_limit_error", 400: "invalid_request_error"}.get(
            self.status, "server_error"
        )
        return {"error": {"message": self.message, "type": kind, "param": None, "code": None}}


class MockDrop(Exception):
    """The simulator closes the connection (before answering, or mid-stream)."""


@dataclass(slots=True)
class Directives:
    status: int | None = None
    status_times: int | None = None
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    chunk_latency_ms: float = 0.0
    timeout: bool = False
    drop_after: int | None = None
    tokens: int | None = None
    usage: bool = True

    def merge(self, text: str) -> None:
        for part in text.replace(",", "@").split("@"):
            name, _, value = part.strip().partition("=")
            if not name:
                continue
            if name == "status":
                code, _, times = value.partition("x")
                self.status = int(code)
                self.status_times = int(times) if times else None
            elif name == "latency":
                self.latency_ms = float(value)
            elif name == "jitter":
                self.jitter_ms = float(value)
            elif name == "chunk_latency":
                self.chunk_latency_ms = float(value)
            elif name == "timeout":
                self.timeout = True
            elif name == "drop":
                self.drop_after = int(value or 0)
            elif name == "tokens":
                self.tokens = int(value)
            elif name == "no_usage":
                self.usage = False


@dataclass
class SimulatorConfig:
    """Server-wide defaults; directives override them per request."""

    latency_ms: float = 0.0
    # Each answer's latency is drawn uniformly from latency ± jitter (seeded, so a run's
    # sequence of delays repeats): clients of a fixed-latency upstream move in lock step.
    latency_jitter_ms: float = 0.0
    jitter_seed: int = 0
    chunk_latency_ms: float = 0.0
    completion_tokens: int = 12
    embedding_dimensions: int = 8
    models: list[str] = field(default_factory=lambda: ["mock-chat", "mock-embedding"])
    owned_by: str = "enclava-mock"
    record_requests: int = 50


def estimate_tokens(text: str) -> int:
    """The simulator's tokenizer: about four UTF-8 bytes per token."""
    return max(1, math.ceil(len(text.encode()) / 4)) if text else 0


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def prompt_tokens_of(messages: list[Any]) -> int:
    total = 0
    for message in messages:
        if isinstance(message, dict):
            total += 3 + estimate_tokens(_content_text(message.get("content")))
    return total


class Simulator:
    """Deterministic OpenAI-shaped answers with scripted faults; safe for concurrent use."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.script: deque[tuple[str | None, str]] = deque()
        self.counts: dict[str, int] = {}
        self.requests: deque[dict[str, Any]] = deque(maxlen=self.config.record_requests)
        self.headers_seen: deque[dict[str, str]] = deque(maxlen=self.config.record_requests)
        self.total_requests = 0
        self._random = random.Random(self.config.jitter_seed)

    def reset(self) -> None:
        self.script.clear()
        self.counts.clear()
        self.requests.clear()
        self.headers_seen.clear()
        self.total_requests = 0

    # -- directives and faults ---------------------------------------------------------------

    def directives(self, model: str, header: str | None) -> Directives:
        directives = Directives(
            latency_ms=self.config.latency_ms,
            jitter_ms=self.config.latency_jitter_ms,
            chunk_latency_ms=self.config.chunk_latency_ms,
        )
        _, _, from_model = model.partition("@")
        if from_model:
            directives.merge(from_model)
        if header:
            directives.merge(header)
        for index, (only_model, scripted) in enumerate(self.script):
            if only_model is None or only_model == model:
                del self.script[index]
                directives.merge(scripted)
                break
        return directives

    def record(self, path: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.total_requests += 1
        key = f"{path} {body.get('model', '')}"
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.config.record_requests:
            self.requests.append({"path": path, "body": body})
            self.headers_seen.append(headers)

    def latency_of(self, directives: Directives) -> float:
        """This answer's delay in milliseconds."""
        if not directives.jitter_ms:
            return directives.latency_ms
        spread = self._random.uniform(-directives.jitter_ms, directives.jitter_ms)
        return max(0.0, directives.latency_ms + spread)

    async def before_response(
        self, model: str, directives: Directives, disconnected: Any = None
    ) -> None:
        """Apply latency, timeouts and status faults (raises ``MockFault`` / ``MockDrop``).

        ``disconnected`` (an awaitable factory) ends a simulated timeout when the client gives
        up, so no handler outlives its connection."""
        if directives.timeout:
            waiter = disconnected() if disconnected is not None else asyncio.sleep(TIMEOUT_SLEEP_S)
            await asyncio.wait_for(waiter, TIMEOUT_SLEEP_S)
            raise MockDrop()
        delay_ms = self.latency_of(directives)
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if directives.status is not None and directives.status != 200:
            fault_key = f"fault {model}"
            seen = self.counts.get(fault_key, 0)
            if directives.status_times is None or seen < directives.status_times:
                self.counts[fault_key] = seen + 1
                raise MockFault(
                    directives.status,
                    f"simulated upstream error {directives.status}",
                    retry_after=0 if directives.status == 429 else None,
                )

    # -- answers -------------------------------------------------------------------------------

    def _completion_tokens(self, body: dict[str, Any], directives: Directives) -> int:
        wanted = directives.tokens if directives.tokens is not None else None
        if wanted is None:
            wanted = self.config.completion_tokens
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if isinstance(limit, int) and limit > 0:
            return min(wanted, limit)
        return wanted

    @staticmethod
    def _words(count: int) -> list[str]:
        return [WORDS[i % len(WORDS)] + " " for i in range(count)]

    @staticmethod
    def _wants_tool_call(body: dict[str, Any]) -> dict[str, Any] | None:
        tools = body.get("tools")
        choice = body.get("tool_choice")
        if not tools or choice in (None, "none", "auto"):
            return None
        name = tools[0].get("function", {}).get("name", "tool")
        if isinstance(choice, dict):
            name = choice.get("function", {}).get("name", name)
        return {"name": name, "arguments": "{}"}

    def _content_for(self, body: dict[str, Any], tokens: int) -> str:
        response_format = body.get("response_format") or {}
        if response_format.get("type") in ("json_object", "json_schema"):
            return '{"simulated": true}'
        return "".join(self._words(tokens)).rstrip()

    def chat(self, body: dict[str, Any], directives: Directives) -> dict[str, Any]:
        model = str(body.get("model", ""))
        tokens = self._completion_tokens(body, directives)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "length" if isinstance(limit, int) and tokens >= limit else "stop"
        tool_call = self._wants_tool_call(body)
        n = body.get("n") or 1
        choices = []
        for index in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": None, "refusal": None}
            choice_finish = finish
            if tool_call:
                message["tool_calls"] = [
                    {"id": f"call_{index}", "type": "function", "function": dict(tool_call)}
                ]
                choice_finish = "tool_calls"
            else:
                message["content"] = self._content_for(body, tokens)
            logprobs = None
            if body.get("logprobs"):
                logprobs = {
                    "content": [
                        {"token": w, "logprob": -0.1, "bytes": list(w.encode()), "top_logprobs": []}
                        for w in self._words(tokens)
                    ],
                    "refusal": None,
                }
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "logprobs": logprobs,
                    "finish_reason": choice_finish,
                }
            )
        prompt = prompt_tokens_of(body.get("messages") or [])
        result: dict[str, Any] = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "system_fingerprint": "enclava-mock",
        }
        if directives.usage:
            result["usage"] = {
                "prompt_tokens": prompt,
                "completion_tokens": tokens * n,
                "total_tokens": prompt + tokens * n,
            }
        return result

    async def chat_stream(
        self, body: dict[str, Any], directives: Directives
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunk dicts; raises ``MockDrop`` when the directives say the connection breaks."""
        model = str(body.get("model", ""))
        tokens = self._completion_tokens(body, directives)
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "length" if isinstance(limit, int) and tokens >= limit else "stop"
        n = body.get("n") or 1
        base = {
            "id": "chatcmpl-" + uuid.uuid4().hex,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "enclava-mock",
        }
        sent = 0
        pause = directives.chunk_latency_ms / 1000

        async def emit(chunk: dict[str, Any]) -> dict[str, Any]:
            nonlocal sent
            if directives.drop_after is not None and sent >= directives.drop_after:
                raise MockDrop()
            if pause and sent:
                await asyncio.sleep(pause)
            sent += 1
            return {**base, **chunk}

        for index in range(n):
            delta = {"role": "assistant", "content": ""}
            yield await emit({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        tool_call = self._wants_tool_call(body)
        if tool_call:
            for index in range(n):
                call = {
                    "index": 0,
                    "id": f"call_{index}",
                    "type": "function",
                    "function": tool_call,
                }
                yield await emit(
                    {
                        "choices": [
                            {"index": index, "delta": {"tool_calls": [call]}, "finish_reason": None}
                        ]
                    }
                )
            finish = "tool_calls"
        else:
            pieces = self._words(tokens)
            formatted = body.get("response_format") or {}
            if formatted.get("type") in ("json_object", "json_schema"):
                pieces = ['{"simulated": ', "true}"]
            for word in pieces:
                for index in range(n):
                    yield await emit(
                        {
                            "choices": [
                                {"index": index, "delta": {"content": word}, "finish_reason": None}
                            ]
                        }
                    )
        for index in range(n):
            yield await emit({"choices": [{"index": index, "delta": {}, "finish_reason": finish}]})
        options = body.get("stream_options") or {}
        if options.get("include_usage") and directives.usage:
            prompt = prompt_tokens_of(body.get("messages") or [])
            yield await emit(
                {
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": tokens * n,
                        "total_tokens": prompt + tokens * n,
                    },
                }
            )

    def embeddings(self, body: dict[str, Any], directives: Directives) -> dict[str, Any]:
        raw = body.get("input")
        inputs = raw if isinstance(raw, list) else [raw]
        if inputs and all(isinstance(x, int) for x in inputs):
            inputs = [inputs]
        dims = body.get("dimensions") or self.config.embedding_dimensions
        data = []
        prompt = 0
        for index, item in enumerate(inputs):
            text = item if isinstance(item, str) else " ".join(map(str, item))
            prompt += estimate_tokens(text) if isinstance(item, str) else len(item)
            vector = _vector(text, dims)
            embedding: Any = vector
            if body.get("encoding_format") == "base64":
                embedding = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        result: dict[str, Any] = {
            "object": "list",
            "data": data,
            "model": body.get("model", ""),
        }
        result["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
        return result

    def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": self.config.owned_by}
                for m in self.config.models
            ],
        }


def _vector(text: str, dims: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    values = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dims)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


# -- HTTP ------------------------------------------------------------------------------------

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


async def _read_body(receive: Any) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _send_json(
    send: Any, status: int, payload: Any, headers: list[Any] | None = None
) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode()), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_app(simulator: Simulator | None = None) -> Any:
    """The simulator as a raw ASGI app (no framework on the hot path)."""
    sim = simulator or Simulator()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path.startswith("/v1/"):
            path = path[3:]
        method: str = scope["method"]
        if path.startswith("/_mock/"):
            await _control(sim, path, method, await _read_body(receive), send)
            return
        if method == "GET" and path == "/models":
            sim.counts["GET /models"] = sim.counts.get("GET /models", 0) + 1
            await _send_json(send, 200, sim.models())
            return
        if method == "GET" and path.startswith("/models/"):
            model_id = path[len("/models/") :]
            await _send_json(
                send,
                200,
                {"id": model_id, "object": "model", "created": 0, "owned_by": sim.config.owned_by},
            )
            return
        if method != "POST" or path not in ("/chat/completions", "/embeddings"):
            await _send_json(send, 404, MockFault(404, f"no route {method} {path}").body())
            return
        raw = await _read_body(receive)
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body must be an object")
        except ValueError:
            await _send_json(send, 400, MockFault(400, "body is not a JSON object").body())
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        sim.record(path, body, headers)
        model = str(body.get("model", ""))
        directives = sim.directives(model, headers.get("x-mock-directives"))

        async def disconnected() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        try:
            await sim.before_response(model, directives, disconnected)
            if path == "/embeddings":
                await _send_json(send, 200, sim.embeddings(body, directives))
            elif body.get("stream"):
                await _stream(sim, body, directives, send, receive)
            elif directives.drop_after is not None:
                await _send_truncated(send, sim.chat(body, directives))
            else:
                await _send_json(send, 200, sim.chat(body, directives))
        except MockFault as fault:
            extra = []
            if fault.retry_after is not None:
                extra.append((b"retry-after", str(fault.retry_after).encode()))
            await _send_json(send, fault.status, fault.body(), extra)
        except MockDrop:
            # Raising out of the ASGI app makes the server close the connection abruptly.
            raise ConnectionAbortedError("simulated dropped connection") from None

    return app


async def _send_truncated(send: Any, payload: Any) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [*_JSON, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body[: len(body) // 2], "more_body": True})
    raise MockDrop()


async def _stream(
    sim: Simulator, body: dict[str, Any], directives: Directives, send: Any, receive: Any
) -> None:
    started = directives.drop_after == 0
    if started:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    gone = asyncio.Event()
    watcher = None
    if directives.chunk_latency_ms:
        # A slow stream stops when its client goes away (a fast one ends soon anyway).
        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            gone.set()

        watcher = asyncio.ensure_future(watch())
    try:
        async for chunk in sim.chat_stream(body, directives):
            if gone.is_set():
                return
            if not started:
                await send({"type": "http.response.start", "status": 200, "headers": _SSE})
                started = True
            await send(
                {
                    "type": "http.response.body",
                    "body": b"data: " + orjson.dumps(chunk) + b"\n\n",
                    "more_body": True,
                }
            )
    except MockDrop:
        # Let the client read what was sent before the connection goes, so a test knows
        # exactly how much was delivered.
        await asyncio.sleep(0.05)
        raise
    finally:
        if watcher is not None:
            watcher.cancel()
    if not started:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _control(sim: Simulator, path: str, method: str, raw: bytes, send: Any) -> None:
    payload = orjson.loads(raw) if raw else {}
    if path == "/_mock/config":
        if method == "POST":
            for name, value in payload.items():
                if hasattr(sim.config, name):
                    setattr(sim.config, name, value)
        await _send_json(send, 200, vars(sim.config))
    elif path == "/_mock/script" and method == "POST":
        model = payload.get("model")
        for directive in payload.get("directives", []):
            sim.script.append((model, str(directive)))
        await _send_json(send, 200, {"queued": len(sim.script)})
    elif path == "/_mock/stats":
        await _send_json(
            send,
            200,
            {
                "total_requests": sim.total_requests,
                "counts": sim.counts,
                "requests": list(sim.requests),
                "headers": list(sim.headers_seen),
            },
        )
    elif path == "/_mock/reset" and method == "POST":
        sim.reset()
        await _send_json(send, 200, {"reset": True})
    else:
        await _send_json(send, 404, MockFault(404, "unknown control endpoint").body())


def serve(host: str = "127.0.0.1", port: int = 9000, **config: Any) -> None:
    """Run the simulator with uvicorn (httptools and uvloop when installed)."""
    import uvicorn

    simulator = Simulator(SimulatorConfig(**config))
    uvicorn.run(
        create_app(simulator),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
    )
