"""Security headers on every response.

- ``Content-Security-Policy``: strict for the dashboard (scripts, styles, images, forms and
  connections from this origin only; no inline script, no plugins, no framing, no ``<base>``);
  ``default-src 'none'`` for API responses, which are never meant to render; a relaxed policy
  for the interactive OpenAPI pages only (``/docs``, ``/redoc``), whose HTML FastAPI generates
  with an inline bootstrap script and assets from a CDN, and which carry no user data.
- ``Strict-Transport-Security`` when the request arrived over TLS: the ASGI scheme is ``https``
  either directly or because uvicorn's proxy-header support trusted ``X-Forwarded-Proto`` from a
  proxy in ``ENCLAVA_FORWARDED_ALLOW_IPS``.
- ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` (with ``frame-ancestors
  'none'`` for browsers that honour CSP), ``Referrer-Policy: same-origin``,
  ``Cross-Origin-Opener-Policy`` and a restrictive ``Permissions-Policy`` on HTML.
- ``Cache-Control: no-store`` on API and dashboard responses that did not choose otherwise, so
  tokens, keys and conversations do not linger in shared or browser caches.

Headers the application already set are left alone.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.security.asgi import is_api_path

DASHBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https:; "
    "style-src 'self' 'unsafe-inline' https:; img-src 'self' data: https:; "
    "font-src 'self' https:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


def _content_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    for key, value in headers:
        if key.lower() == b"content-type":
            return value.lower()
    return b""


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, *, hsts_max_age_s: int = 63_072_000) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_max_age_s}; includeSubDomains".encode()

    def _extra_headers(self, scope: Scope, content_type: bytes) -> list[tuple[bytes, bytes]]:
        path = scope["path"]
        is_html = content_type.startswith(b"text/html")
        if path in DOCS_PATHS:
            csp = DOCS_CSP
        elif is_html:
            csp = DASHBOARD_CSP
        else:
            csp = API_CSP
        extra = [
            (b"content-security-policy", csp.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
        ]
        if is_html:
            extra.append((b"cross-origin-opener-policy", b"same-origin"))
            extra.append((b"permissions-policy", PERMISSIONS_POLICY.encode()))
        if scope.get("scheme") == "https":
            extra.append((b"strict-transport-security", self.hsts))
        if is_api_path(path) or is_html:
            extra.append((b"cache-control", b"no-store"))
        return extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {key.lower() for key, _ in headers}
                for key, value in self._extra_headers(scope, _content_type(headers)):
                    if key not in present:
                        headers.append((key, value))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
