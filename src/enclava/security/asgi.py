"""Small helpers shared by the security middlewares (plain ASGI, no request objects needed)."""

from __future__ import annotations

from http.cookies import SimpleCookie

from starlette.requests import Request
from starlette.types import Receive, Scope, Send

PUBLIC_API_PREFIX = "/api/v1"
INTERNAL_API_PREFIX = "/api-internal/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case bytes), decoded as latin-1."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def cookies(scope: Scope) -> dict[str, str]:
    raw = header(scope, b"cookie")
    if not raw:
        return {}
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # a malformed Cookie header carries no usable cookies
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def is_api_path(path: str) -> bool:
    return under(path, PUBLIC_API_PREFIX) or under(path, INTERNAL_API_PREFIX)


def content_length(scope: Scope) -> int | None:
    raw = header(scope, b"content-length")
    if raw is None:
        return None
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


async def send_error(
    scope: Scope,
    receive: Receive,
    send: Send,
    status_code: int,
    message: str,
    *,
    code: str,
    openai_type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> None:
    """An error in the shape of the API the request was for (OpenAI under /api/v1)."""
    from enclava.errors import error_response

    response = error_response(
        Request(scope),
        status_code,
        message,
        code=code,
        openai_type=openai_type,
        param=param,
        headers=headers,
    )
    await response(scope, receive, send)
