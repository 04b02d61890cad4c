"""Plain ASGI middleware (streaming responses pass through untouched)."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.kit.logging import request_id_var

logger = logging.getLogger("enclava.request")

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestIdMiddleware:
    """Gives each request an id (the caller's ``X-Request-ID`` when well-formed), puts it in every
    log line and response header, and logs one line per request: method, path, status, time.

    It is the outermost layer, so it also turns an unhandled exception into a shaped 500 that
    still carries the request id (and never the exception's text)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def error_response(request: Request, status_code: int) -> Response:
        from enclava.errors import error_response

        return error_response(
            request,
            status_code,
            "Internal server error",
            code="internal_error",
            openai_type="api_error",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.perf_counter()
        status = 500
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception("unhandled error", extra={"path": scope["path"]})
            if started_response:
                raise  # too late for an error response; the server closes the connection
            response = self.error_response(Request(scope), 500)
            await response(scope, receive, send_with_id)
        finally:
            # The path only: query strings may carry things that must not reach the logs.
            logger.info(
                "request",
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
            request_id_var.reset(token)
