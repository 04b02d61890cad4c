"""Refuse credentials in URLs.

URLs end up in proxy logs, browser history and ``Referer`` headers, so Enclava accepts API keys
and tokens only in the ``Authorization`` header. A request whose query string names a
credential parameter (``api_key``, ``access_token``, ...) or carries a value shaped like an
Enclava API key, refresh token or JWT is answered 400 ``credentials_in_query``, in the shape of
the API it was for, before any authentication runs (on every route, the dashboard included;
``auth.dependencies`` applies the same rule to authenticated routes). The value is never logged or recorded.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from starlette.types import ASGIApp, Receive, Scope, Send

from enclava.security.asgi import send_error

logger = logging.getLogger("enclava.security")

CREDENTIAL_PARAMETERS = frozenset(
    {
        "api_key",
        "apikey",
        "api-key",
        "access_token",
        "refresh_token",
        "id_token",
        "auth",
        "authorization",
        "bearer",
        "jwt",
        "session",
        "enclava_session",
    }
)
_CREDENTIAL_VALUE = re.compile(
    r"(?<![A-Za-z0-9_])(?:ek_[A-Za-z0-9_-]{16,}|ert_[A-Za-z0-9_-]{16,}|"
    r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.)"
)


def credential_in_query(query_string: bytes) -> str | None:
    """The name of the first query parameter that carries a credential, if any."""
    query = query_string.decode("latin-1")
    for part in query.split("&") if query else ():
        raw_name, _, raw_value = part.partition("=")
        name = unquote_plus(raw_name).strip().lower()
        value = unquote_plus(raw_value).strip()
        if name in CREDENTIAL_PARAMETERS and value:
            return name
        if _CREDENTIAL_VALUE.search(value):
            return name
    return None


class UrlCredentialsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("query_string"):
            await self.app(scope, receive, send)
            return
        parameter = credential_in_query(bytes(scope["query_string"]))
        if parameter is None:
            await self.app(scope, receive, send)
            return
        logger.warning(
            "credential in query string refused",
            extra={"parameter": parameter[:40], "path": scope["path"][:120]},
        )
        await send_error(
            scope,
            receive,
            send,
            400,
            "Credentials are accepted only in the 'Authorization: Bearer' header, never in the "
            "URL. Treat a key that was sent in a URL as leaked and rotate it.",
            code="credentials_in_query",
            param=parameter[:40],
        )
