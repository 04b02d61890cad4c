"""Threat detection: scans management requests for injection and traversal patterns.

What is scanned: the URL path, the query string, a few headers that reach logs and audit rows
(User-Agent, Referer, Origin, forwarding headers) and the JSON or form fields of bodies up to
``ENCLAVA_THREAT_SCAN_MAX_BODY_BYTES``. What is not: bodies and queries of LLM-content routes
(``routes.CONTENT_ROUTES``), LLM-content and secret fields inside management bodies, the
Authorization and Cookie headers, multipart uploads.

Modes (``ENCLAVA_THREAT_DETECTION``): ``block`` answers 403 with the request id, ``log`` lets
the request through, ``off`` does nothing. In both active modes each flagged request becomes
one ``security.threat_detected`` audit row (rule ids, locations and a short sanitised excerpt of
the matched text, never a whole value) written in its own transaction.

The body is read into memory only when it will be scanned (small JSON or form bodies), and is
then handed to the application byte for byte as it arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enclava.kit.logging import request_id_var
from enclava.security.asgi import content_length, header, send_error
from enclava.security.routes import is_content_field, is_content_route, is_secret_field
from enclava.security.threats import Finding, scan_request_value, scan_value

logger = logging.getLogger("enclava.security")

Mode = Literal["block", "log", "off"]

# Headers an attacker controls that end up in logs, audit rows or redirects.
SCANNED_HEADERS = (
    b"user-agent",
    b"referer",
    b"origin",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"x-real-ip",
    b"x-original-url",
    b"x-rewrite-url",
    b"forwarded",
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_MAX_STRINGS = 5000  # values scanned per body; the rest of an enormous document is skipped
_MAX_DEPTH = 32
_MAX_LOCATION = 80
_MAX_FINDINGS_RECORDED = 10


def _location(prefix: str, name: str) -> str:
    cleaned = "".join(ch if ch.isprintable() and ch.isascii() else "?" for ch in name)
    return f"{prefix}:{cleaned}"[:_MAX_LOCATION]


def scan_request_line(scope: Scope, *, include_query: bool = True) -> list[Finding]:
    """Findings in the path, the query string and the scanned headers."""
    findings: list[Finding] = []
    raw_path = scope.get("raw_path")
    path = bytes(raw_path).decode("latin-1") if raw_path else scope.get("path", "")
    findings += scan_request_value(path, "path")
    if include_query:
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        for part in query.split("&") if query else ():
            name, _, value = part.partition("=")
            location = _location("query", name)
            findings += scan_value(name, location, url_encoded=True)
            findings += scan_value(value, location, url_encoded=True)
    for key, value in scope.get("headers", ()):
        if key in SCANNED_HEADERS:
            scan = scan_request_value if key == b"user-agent" else scan_value
            findings += scan(bytes(value).decode("latin-1"), _location("header", key.decode()))
    return findings


def _json_strings(node: Any, path: str, depth: int = 0) -> Iterator[tuple[str, str]]:
    if depth > _MAX_DEPTH:
        return
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            key = str(key)
            if is_content_field(key) or is_secret_field(key):
                continue
            child = f"{path}.{key}" if path else key
            yield child, key
            yield from _json_strings(value, child, depth + 1)
    elif isinstance(node, list):
        for item in node:
            yield from _json_strings(item, f"{path}[]", depth + 1)


def scan_body(body: bytes, content_type: str) -> list[Finding]:
    """Findings in the fields of a JSON or URL-encoded form body."""
    findings: list[Finding] = []
    if content_type.startswith("application/x-www-form-urlencoded"):
        text = body.decode("latin-1")
        for part in text.split("&") if text else ():
            name, _, value = part.partition("=")
            if is_content_field(name) or is_secret_field(name):
                continue
            findings += scan_value(value, _location("body", name), url_encoded=True)
        return findings
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return findings  # the application answers malformed JSON itself
    for count, (path, value) in enumerate(_json_strings(document, "")):
        if count >= _MAX_STRINGS:
            break
        findings += scan_value(value, _location("body", path or "$"))
    return findings


def _scannable_body_type(scope: Scope) -> str | None:
    content_type = (header(scope, b"content-type") or "").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        return content_type
    if content_type.startswith("application/json") or "+json" in content_type.split(";")[0]:
        return content_type
    return None


async def _buffer_body(receive: Receive, limit: int) -> tuple[list[Message], bytes | None]:
    """Read body messages until the end or ``limit`` bytes; returns the messages read and the
    whole body (``None`` when it was larger than ``limit`` or the client went away)."""
    messages: list[Message] = []
    size = 0
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return messages, None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return messages, b"".join(chunks)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


class ThreatDetectionMiddleware:
    def __init__(self, app: ASGIApp, *, mode: Mode = "block", max_scan_bytes: int = 256 * 1024):
        self.app = app
        self.mode = mode
        self.max_scan_bytes = max_scan_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.mode == "off":
            await self.app(scope, receive, send)
            return
        content_route = is_content_route(scope["path"])
        findings = scan_request_line(scope, include_query=not content_route)
        content_type = _scannable_body_type(scope)
        if not content_route and content_type and scope["method"] in _BODY_METHODS:
            declared = content_length(scope)
            if declared is None or declared <= self.max_scan_bytes:
                messages, body = await _buffer_body(receive, self.max_scan_bytes)
                if body:
                    findings += scan_body(body, content_type)
                receive = _replay(messages, receive)
        if not findings:
            await self.app(scope, receive, send)
            return
        blocked = self.mode == "block"
        await _report(scope, findings, blocked=blocked)
        if not blocked:
            await self.app(scope, receive, send)
            return
        request_id = request_id_var.get() or "unknown"
        await send_error(
            scope,
            receive,
            send,
            403,
            "The request was blocked by threat detection. If it is legitimate, give your "
            f"administrator the request id {request_id}.",
            code="threat_detected",
            openai_type="permission_error",
        )


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for finding in findings:
        if (finding.rule_id, finding.location) not in seen:
            seen.add((finding.rule_id, finding.location))
            unique.append(finding)
    return unique


async def _report(scope: Scope, findings: list[Finding], *, blocked: bool) -> None:
    from enclava.audit.service import record
    from enclava.db import transaction

    findings = _unique(findings)[:_MAX_FINDINGS_RECORDED]
    rules = sorted({f.rule_id for f in findings})
    logger.warning(
        "threat detected",
        extra={
            "rules": rules,
            "locations": sorted({f.location for f in findings}),
            "blocked": blocked,
            "method": scope["method"],
        },
    )
    app = scope.get("app")
    state = getattr(getattr(app, "state", None), "enclava", None)
    if state is None:
        return
    details = {
        "blocked": blocked,
        "method": scope["method"],
        "route": "".join(ch if ch.isprintable() else "?" for ch in scope["path"])[:120],
        "rules": rules,
        "categories": sorted({f.category for f in findings}),
        "findings": [
            {"rule": f.rule_id, "location": f.location, "excerpt": f.excerpt} for f in findings
        ],
    }
    try:
        async with transaction(state.session_factory) as session:
            record(
                session,
                action="security.threat_detected",
                resource_type="request",
                details=details,
                success=not blocked,
                request=Request(scope),
            )
    except Exception:
        # The audit trail is best effort here: a database outage must not turn a detection
        # into a 500, and the warning above is already in the log.
        logger.exception("could not write the threat-detection audit row")
