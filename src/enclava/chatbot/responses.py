"""How a turn goes on the wire: JSON bodies and server-sent events, for ``/chatbot/interact``
(and the dashboard) and for the OpenAI chat-completions shape."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from fastapi import Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from enclava.chatbot.service import StreamingTurn, TurnResult
from enclava.errors import AppError

logger = logging.getLogger(__name__)

CONVERSATION_HEADER = "X-Conversation-ID"
DONE = b"data: [DONE]\n\n"


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def json_response(payload: Any, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json", headers=headers)


def error_payload(exc: Exception) -> dict[str, Any]:
    if isinstance(exc, AppError):
        return {
            "message": exc.message,
            "type": exc.openai_type,
            "param": exc.param,
            "code": exc.code,
        }
    logger.error("chatbot stream failed", extra={"error": type(exc).__name__})
    return {
        "message": "Internal server error",
        "type": "api_error",
        "param": None,
        "code": "internal_error",
    }


def usage(result: TurnResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


class TurnStreamResponse(StreamingResponse):
    """Server-sent events of a streamed turn; the turn (and so its metered call) is closed
    however the response ends, including a client that leaves before the first byte."""

    def __init__(
        self,
        turn: StreamingTurn,
        render: Callable[[StreamingTurn], AsyncIterator[bytes]],
    ) -> None:
        self.turn = turn
        super().__init__(
            render(turn),
            media_type="text/event-stream",
            headers={
                "cache-control": "no-cache",
                "x-accel-buffering": "no",
                CONVERSATION_HEADER: str(turn.conversation_id),
            },
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.turn.aclose()


def interact_body(result: TurnResult) -> dict[str, Any]:
    return {
        "response": result.response,
        "conversation_id": str(result.conversation_id),
        "message_id": str(result.message_id) if result.message_id else None,
        "sources": result.sources,
        "usage": usage(result),
        "refused": result.refused,
    }


async def interact_events(turn: StreamingTurn) -> AsyncIterator[bytes]:
    yield sse(
        {
            "type": "start",
            "conversation_id": str(turn.conversation_id),
            "sources": turn.sources,
            "refused": turn.refused,
        }
    )
    try:
        async for event in turn.events:
            if isinstance(event, str):
                yield sse({"type": "delta", "content": event})
            else:
                yield sse({"type": "done", **interact_body(event)})
    except Exception as exc:
        yield sse({"type": "error", "error": error_payload(exc)})
        return
    yield DONE


def completion_body(result: TurnResult) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{(result.message_id or uuid.uuid4()).hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": result.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.response, "refusal": None},
                "finish_reason": result.finish_reason or "stop",
                "logprobs": None,
            }
        ],
        "usage": usage(result),
        "conversation_id": str(result.conversation_id),
        "sources": result.sources,
    }


def openai_events(include_usage: bool) -> Callable[[StreamingTurn], AsyncIterator[bytes]]:
    async def render(turn: StreamingTurn) -> AsyncIterator[bytes]:
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
            return {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": turn.model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
                ],
            }

        first = chunk({"role": "assistant", "content": ""})
        first.update(conversation_id=str(turn.conversation_id), sources=turn.sources)
        yield sse(first)
        try:
            async for event in turn.events:
                if isinstance(event, str):
                    yield sse(chunk({"content": event}))
                    continue
                yield sse(chunk({}, event.finish_reason or "stop"))
                if include_usage:
                    final = chunk({})
                    final.update(choices=[], usage=usage(event))
                    yield sse(final)
        except Exception as exc:
            yield sse({"error": error_payload(exc)})
            return
        yield DONE

    return render
