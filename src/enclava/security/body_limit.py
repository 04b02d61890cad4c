"""Request body size limits, enforced before anything buffers or parses a body.

A declared ``Content-Length`` above the limit is refused at once. A body without one (chunked
transfer) is counted as it streams; when it passes the limit the application gets no more of
it, and whatever it was about to answer is replaced by the 413. Multipart uploads to the RAG
document routes get ``ENCLAVA_MAX_UPLOAD_BYTES``; everything else
``ENCLAVA_MAX_REQUEST_BODY_BYTES``.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.security.asgi import content_length, send_error
from enclava.security.routes import is_upload_route

# Room for the multipart envelope (boundaries, part headers, small form fields) around a file of
# exactly ``max_upload_bytes``; the upload parser enforces the exact limit on the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024


class _BodyTooLarge(Exception):
    pass


class BodySizeLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, scope: Scope) -> int:
        if is_upload_route(scope["path"]):
            return self.max_upload_bytes + MULTIPART_OVERHEAD_BYTES
        return self.max_body_bytes

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        upload = is_upload_route(scope["path"])
        await send_error(
            scope,
            receive,
            send,
            413,
            f"{'The upload' if upload else 'Request body'} is larger than the limit of {limit} bytes",
            # The same code the upload parser uses, whichever layer notices first.
            code="file_too_large" if upload else "payload_too_large",
            # Tell HTTP/1.1 clients not to reuse a connection whose body was not read.
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        declared = content_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(scope, receive, send, limit)
            return

        received = 0
        too_large = False
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal response_started
            if too_large:
                return  # the 413 below replaces whatever the application makes of the error
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except _BodyTooLarge:
            pass
        except Exception:
            if not too_large:
                raise
        if too_large and not response_started:
            await self._refuse(scope, receive, send, limit)
