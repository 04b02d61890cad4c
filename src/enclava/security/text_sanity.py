"""Refuse text no database can store: NUL characters and unpaired UTF-16 surrogates.

JSON may spell both (``"\\u0000"``, ``"\\ud800"``) and Python decodes them into ``str`` values
happily, but PostgreSQL rejects NUL in ``text`` and ``jsonb`` and no UTF-8 encoder accepts a lone
surrogate, so such a value reaching a query becomes a 500. This layer answers 400 instead, for
every route, before any endpoint runs: in JSON bodies (the escapes are found in the raw bytes;
the body is then handed on unchanged), and as ``%00`` in the path, the query string and
URL-encoded form bodies. Multipart uploads are not inspected: files are bytes, not text.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.security.asgi import header, send_error

# A \uXXXX escape preceded by an even number of further backslashes (so it is not itself an
# escaped backslash followed by "uXXXX").
_ESCAPE = re.compile(rb"(?<!\\)((?:\\\\)*)\\u([0-9a-fA-F]{4})")
_ENCODED_NUL = re.compile(rb"%00")


def json_text_problem(body: bytes) -> str | None:
    """Why a JSON body holds text that cannot be stored, or ``None``."""
    if b"\\u" not in body:
        return None
    pending_high_end = -1
    for match in _ESCAPE.finditer(body):
        code = int(match.group(2), 16)
        start = match.start(2) - 2  # where the "\u" begins
        if pending_high_end >= 0:
            if 0xDC00 <= code <= 0xDFFF and start == pending_high_end:
                pending_high_end = -1
                continue
            return "an unpaired surrogate"
        if code == 0:
            return "a NUL character"
        if 0xD800 <= code <= 0xDBFF:
            pending_high_end = match.end()
        elif 0xDC00 <= code <= 0xDFFF:
            return "an unpaired surrogate"
    return "an unpaired surrogate" if pending_high_end >= 0 else None


def _url_problem(scope: Scope) -> bool:
    raw_path = scope.get("raw_path") or scope.get("path", "").encode()
    return bool(_ENCODED_NUL.search(bytes(raw_path)) or b"\x00" in bytes(raw_path)) or bool(
        _ENCODED_NUL.search(bytes(scope.get("query_string", b"")))
    )


class TextSanityMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, problem: str) -> None:
        await send_error(
            scope,
            receive,
            send,
            400,
            f"The request contains {problem}, which text fields cannot hold",
            code="invalid_text",
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if _url_problem(scope):
            await self._refuse(scope, receive, send, "a NUL character")
            return
        content_type = (header(scope, b"content-type") or "").lower()
        is_json = content_type.startswith("application/json") or "+json" in content_type
        is_form = content_type.startswith("application/x-www-form-urlencoded")
        if not (is_json or is_form) or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        # The body limit outside this layer bounds what is held here; FastAPI reads whole JSON
        # bodies into memory anyway.
        messages: list[Message] = []
        chunks: list[bytes] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        problem = json_text_problem(body) if is_json else None
        if is_form and _ENCODED_NUL.search(body):
            problem = "a NUL character"
        if problem:
            await self._refuse(scope, receive, send, problem)
            return

        async def replayed() -> Message:
            if messages:
                return messages.pop(0)
            return await receive()

        await self.app(scope, replayed, send)
