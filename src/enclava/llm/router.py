"""OpenAI-compatible endpoints under /api/v1: chat completions, embeddings, models, status.

Bodies are read and written with orjson and passed through as dicts (the whole OpenAI request
surface reaches the provider). The completion and embeddings routes open no request session:
the gateway reserves, settles and records on its own, and no database connection is held while
the upstream answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from enclava.auth.dependencies import (
    ApiKeySubject,
    MeteredScopeRequirement,
    app_state,
    metered_api_key_subject,
    reauthenticate_metered,
    require_scopes,
)
from enclava.auth.subject import AuthSubject
from enclava.db import DbSession
from enclava.errors import AppError, BadRequestError
from enclava.llm import admission, gateway, service
from enclava.llm.gateway import ChatStream

router = APIRouter(tags=["llm"])

# Metered: on Redis the request is counted against its rate limits by the gateway's admission,
# in the same round trip as the budget reservation (enclava.llm.admission).
# require_scopes("llm.chat", metered=True), typed for the direct routes below.
_CHAT_SCOPE = MeteredScopeRequirement(("llm.chat",))
_EMBEDDINGS_SCOPE = MeteredScopeRequirement(("llm.embeddings",))
ChatSubject = Annotated[AuthSubject, Depends(_CHAT_SCOPE)]
EmbeddingsSubject = Annotated[AuthSubject, Depends(_EMBEDDINGS_SCOPE)]
ModelsSubject = Annotated[AuthSubject, Depends(require_scopes("llm.models"))]

_JSON_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"type": "object", "additionalProperties": True}}
        },
    }
}


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequestError("Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequestError("Request body must be a JSON object", code="invalid_json")
    return body


def _json(payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


class SSEResponse(StreamingResponse):
    """Server-sent events from a ``ChatStream``; the stream is closed (and so settled) however
    the response ends, including a client that disconnects mid-way."""

    def __init__(self, stream: ChatStream) -> None:
        self.stream = stream
        super().__init__(
            _events(stream),
            media_type="text/event-stream",
            headers={
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
                "x-enclava-model": stream.model,
                "x-enclava-provider": stream.provider,
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.stream.aclose()


async def _events(stream: ChatStream) -> AsyncIterator[bytes]:
    try:
        async for chunk in stream:
            yield b"data: " + orjson.dumps(chunk) + b"\n\n"
    except AppError as exc:
        error = {
            "message": exc.message,
            "type": exc.openai_type,
            "param": exc.param,
            "code": exc.code,
        }
        yield b"data: " + orjson.dumps({"error": error}) + b"\n\n"
        return
    yield b"data: [DONE]\n\n"


async def _metered(
    request: Request, subject: AuthSubject, run: Callable[[AuthSubject], Awaitable[Response]]
) -> Response:
    """Run a metered route's work with its subject. A request that fails before admission is
    still counted; if the key's cached copy turns out stale (``admission.KeyChanged``, or on
    the error path), the work runs once more with the key read afresh, so every answer is
    decided on the key and owner as they are now."""
    state = app_state(request)
    try:
        return await run(subject)
    except admission.KeyChanged:
        subject = await reauthenticate_metered(request)
    except AppError:
        if await admission.complete(state, subject):
            raise
        subject = await reauthenticate_metered(request)
    try:
        return await run(subject)
    except AppError:
        await admission.complete(state, subject)
        raise


@router.post("/chat/completions", openapi_extra=_JSON_BODY, summary="Create a chat completion")
async def chat_completions(request: Request, subject: ChatSubject) -> Response:
    async def run(subject: AuthSubject) -> Response:
        body = await _json_body(request)
        result = await gateway.chat_completion(app_state(request), subject, body)
        if isinstance(result, ChatStream):
            return SSEResponse(result)
        return _json(result.body, result.headers())

    return await _metered(request, subject, run)


@router.post("/embeddings", openapi_extra=_JSON_BODY, summary="Create embeddings")
async def create_embeddings(request: Request, subject: EmbeddingsSubject) -> Response:
    async def run(subject: AuthSubject) -> Response:
        body = await _json_body(request)
        result = await gateway.embeddings(app_state(request), subject, body)
        return _json(result.body, result.headers())

    return await _metered(request, subject, run)


@router.get("/models", summary="List the models this key may use")
async def list_models(request: Request, session: DbSession, subject: ModelsSubject) -> Response:
    await session.commit()
    return _json(await service.list_models(app_state(request), subject))


@router.get("/models/{model_id:path}", summary="Retrieve a model")
async def get_model(
    request: Request, session: DbSession, subject: ModelsSubject, model_id: str
) -> Response:
    await session.commit()
    return _json(await service.get_model(app_state(request), subject, model_id))


@router.get("/llm/providers/status", summary="Provider health, circuits and attestation manifest")
async def providers_status(
    request: Request, session: DbSession, subject: ApiKeySubject
) -> Response:
    await session.commit()
    return _json(await service.provider_status(app_state(request), subject))


# -- the direct routes ---------------------------------------------------------------------------


def _direct(
    endpoint: Callable[[Request, AuthSubject], Awaitable[Response]],
    scope: MeteredScopeRequirement,
) -> Callable[[Request], Awaitable[Response]]:
    async def run(request: Request) -> Response:
        subject = await scope(request, await metered_api_key_subject(request))
        return await endpoint(request, subject)

    return run


def direct_routes(prefix: str) -> list[tuple[str, Callable[[Request], Awaitable[Response]]]]:
    """The two metered endpoints as plain Starlette routes (path, endpoint), which ``app.py``
    adds ahead of every FastAPI router: the same endpoint functions with the same dependencies,
    resolved by hand, so the calls every client makes skip FastAPI's per-request dependency
    solving and its walk through the nested routers (~0.13 ms of CPU per call on the project's
    machine; decision 0008). Errors reach the same exception handlers. The FastAPI routes above
    are what the OpenAPI document describes; tests/llm/test_direct_routes.py checks that the
    two answer alike."""
    return [
        (f"{prefix}/chat/completions", _direct(chat_completions, _CHAT_SCOPE)),
        (f"{prefix}/embeddings", _direct(create_embeddings, _EMBEDDINGS_SCOPE)),
    ]
