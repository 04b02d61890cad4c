"""CSRF protection for every state-changing request a browser could send with our cookies.

A request is checked when its method changes state (not GET, HEAD, OPTIONS, TRACE), it carries
no ``Authorization`` header (a browser cannot add one cross-site without a CORS preflight, which
``ENCLAVA_CORS_ORIGINS`` controls), and it either goes to the dashboard (anything outside the two
APIs, including the sign-in and setup forms: login CSRF) or carries the dashboard's session
cookie. Bearer-token API calls are therefore unaffected.

Two checks, both required:
1. Origin: ``Origin`` (or, when a browser omits it, ``Referer``) must be this site's own origin
   or one listed in ``ENCLAVA_CORS_ORIGINS``; ``Origin: null`` is refused. A request with
   neither header is not from a browser form or script of another site, so this check passes
   and the token decides.
2. Token (double submit): the ``enclava_csrf`` cookie must equal the token sent in the
   ``X-CSRF-Token`` header, the ``csrf_token`` field of a URL-encoded form, or, for multipart
   forms (whose body is not buffered here), the ``csrf_token`` query parameter.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.kit.crypto import constant_time_equals
from enclava.security.asgi import (
    SAFE_METHODS,
    content_length,
    cookies,
    header,
    is_api_path,
    send_error,
)

SESSION_COOKIE = "enclava_session"
CSRF_COOKIE = "enclava_csrf"
CSRF_HEADER = b"x-csrf-token"
CSRF_FIELD = "csrf_token"
_MAX_FORM_BYTES = 1024 * 1024


def _origin_of(url: str) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def own_origin(scope: Scope) -> str | None:
    host = header(scope, b"host")
    if not host:
        return None
    return f"{scope.get('scheme', 'http')}://{host}".lower()


class CsrfMiddleware:
    def __init__(self, app: ASGIApp, *, trusted_origins: list[str] | None = None) -> None:
        self.app = app
        self.trusted_origins = {o.lower().rstrip("/") for o in trusted_origins or [] if o != "*"}

    def applies(self, scope: Scope, jar: dict[str, str]) -> bool:
        if scope["method"] in SAFE_METHODS or header(scope, b"authorization") is not None:
            return False
        return not is_api_path(scope["path"]) or SESSION_COOKIE in jar

    def origin_ok(self, scope: Scope) -> bool:
        allowed = {*self.trusted_origins, own_origin(scope)}
        origin = header(scope, b"origin")
        if origin is not None:
            return origin.strip().lower() != "null" and origin.strip().lower() in allowed
        referer = header(scope, b"referer")
        if referer is not None:
            return _origin_of(referer) in allowed
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        jar = cookies(scope)
        if not self.applies(scope, jar):
            await self.app(scope, receive, send)
            return
        if not self.origin_ok(scope):
            await self._refuse(scope, receive, send, "Cross-site request refused")
            return
        expected = jar.get(CSRF_COOKIE, "")
        submitted = header(scope, CSRF_HEADER)
        content_type = (header(scope, b"content-type") or "").lower()
        if submitted is None and content_type.startswith("multipart/form-data"):
            query = bytes(scope.get("query_string", b"")).decode("latin-1")
            submitted = next(iter(parse_qs(query).get(CSRF_FIELD, [])), None)
        if submitted is None and content_type.startswith("application/x-www-form-urlencoded"):
            submitted, receive = await self._form_token(scope, receive)
        if not (expected and submitted and constant_time_equals(expected, submitted)):
            await self._refuse(scope, receive, send, "Missing or invalid CSRF token")
            return
        await self.app(scope, receive, send)

    async def _form_token(self, scope: Scope, receive: Receive) -> tuple[str | None, Receive]:
        """Read a URL-encoded body (bounded), take its token, and replay it to the app."""
        declared = content_length(scope)
        if declared is not None and declared > _MAX_FORM_BYTES:
            return None, receive
        messages: list[Message] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > _MAX_FORM_BYTES or not message.get("more_body", False):
                break
        pending = list(messages)

        async def replayed() -> Message:
            if pending:
                return pending.pop(0)
            return await receive()

        if size > _MAX_FORM_BYTES:
            return None, replayed
        fields = parse_qs(b"".join(chunks).decode("latin-1"), keep_blank_values=True)
        return next(iter(fields.get(CSRF_FIELD, [])), None), replayed

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, message: str) -> None:
        await send_error(
            scope,
            receive,
            send,
            403,
            f"{message}. Reload the page and try again.",
            code="csrf_failed",
            openai_type="permission_error",
        )
