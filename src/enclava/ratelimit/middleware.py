"""Adds ``X-RateLimit-*`` headers to responses of rate-limited requests (plain ASGI).

The authentication dependencies count the request and leave the window's state in
``request.state.rate_limit``; this layer copies it into the response headers when the response
starts, so it also reaches streamed responses and error responses.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.ratelimit.service import WindowUsage

STATE_ATTRIBUTE = "rate_limit"


class RateLimitHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                usage = scope.get("state", {}).get(STATE_ATTRIBUTE)
                if isinstance(usage, WindowUsage):
                    headers = list(message.get("headers", []))
                    present = {name.lower() for name, _ in headers}
                    for name, value in usage.headers().items():
                        raw = name.lower().encode("latin-1")
                        if raw not in present:
                            headers.append((raw, value.encode("latin-1")))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
