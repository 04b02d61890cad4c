"""Authentication dependencies: endpoints opt in by naming the subject (and scopes) they need.

``/api/v1`` takes API keys; ``/api-internal/v1`` takes JWT access tokens. Both come only in the
``Authorization: Bearer`` header; a credential in the query string is refused with 400. A
signed-in user is loaded on every request; a key and its owner come from a snapshot cached per
key that every change to either invalidates after its commit (``api_keys/lookup.py``). Either
way a disabled user, a revoked key or an ended session loses access at once. Every subject dependency also counts the request against the
subject's rate limits, so naming a subject is enough to be rate limited.

The lookups run in their own short transaction, not the request's ``DbSession``: an endpoint
that never touches ``DbSession`` (the LLM gateway, which commits budget reservations in their
own transactions) holds no database transaction while it waits on a provider. ``subject.user``
and ``subject.api_key`` are therefore detached snapshots; load the row to change it.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request

from enclava.api_keys import lookup
from enclava.auth import repository
from enclava.auth.subject import AuthSubject, PendingChecks
from enclava.auth.tokens import decode_access_claims
from enclava.db import transaction
from enclava.errors import AuthenticationError, BadRequestError, PermissionDeniedError
from enclava.ratelimit import service as ratelimit
from enclava.ratelimit.middleware import STATE_ATTRIBUTE as RATE_LIMIT_STATE
from enclava.state import AppState

_MAX_CREDENTIAL_LENGTH = 4096
# Query parameters that carry credentials in other APIs; refused rather than ignored, so a
# client that put a key in a URL (where proxies and browsers log it) learns at once.
_CREDENTIAL_PARAMS = frozenset(
    {"api_key", "api-key", "apikey", "access_token", "refresh_token", "authorization", "bearer"}
)
_KEY_IN_VALUE = re.compile(r"ek_[A-Za-z0-9_-]{20,}")


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.enclava
    return state


def refuse_credentials_in_query(request: Request) -> None:
    for name, value in request.query_params.multi_items():
        if name.lower() in _CREDENTIAL_PARAMS or _KEY_IN_VALUE.search(value):
            raise BadRequestError(
                "Credentials are accepted only in the 'Authorization: Bearer' header, never in "
                "the URL. Treat a key that was sent in a URL as leaked and rotate it.",
                code="credentials_in_query",
                param=name,
            )


def bearer_token(request: Request) -> str:
    refuse_credentials_in_query(request)
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError(
            "Missing Authorization: Bearer header", code="missing_credentials"
        )
    if len(header) > _MAX_CREDENTIAL_LENGTH:
        raise AuthenticationError("Authorization header is too long", code="invalid_credentials")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "Malformed Authorization header: expected 'Bearer <token>'",
            code="invalid_credentials",
        )
    return token


async def _rate_limit(request: Request, state: AppState, subject: AuthSubject) -> None:
    # Dependencies are cached per request, but guard anyway: one request counts once.
    if getattr(request.state, RATE_LIMIT_STATE, None) is not None:
        return
    usage = await ratelimit.enforce(state, subject)
    setattr(request.state, RATE_LIMIT_STATE, usage)


async def _api_key_subject(request: Request) -> AuthSubject:
    token = bearer_token(request)
    state = app_state(request)
    subject = await lookup.authenticate(state, token)
    request.state.subject = subject
    await _rate_limit(request, state, subject)
    return subject


async def metered_api_key_subject(request: Request) -> AuthSubject:
    """For routes that hand the subject to the gateway. Where the gateway's admission can run
    them on Redis in the same round trip as its budget reservation (``enclava.llm.admission``),
    the rate-limit count and, when this instance holds a copy of the key's cache entry, the
    confirmation of that copy are left to it. Such routes call ``admission.complete`` when
    they fail before admission and run again on ``admission.KeyChanged``."""
    return await _metered_subject(request, from_copy=True)


async def reauthenticate_metered(request: Request) -> AuthSubject:
    """A metered request's subject read afresh, after the copy it was authenticated from turned
    out stale (nothing was counted for it yet)."""
    return await _metered_subject(request, from_copy=False)


async def _metered_subject(request: Request, *, from_copy: bool) -> AuthSubject:
    from enclava.llm import admission

    token = bearer_token(request)
    state = app_state(request)
    if not admission.defers_rate_limit(state):
        subject = await lookup.authenticate(state, token)
        request.state.subject = subject
        await _rate_limit(request, state, subject)
        return subject
    unconfirmed = None
    if from_copy:
        subject, unconfirmed = await lookup.authenticate_unconfirmed(state, token)
    else:
        subject = await lookup.authenticate(state, token)
    subject = replace(subject, pending=PendingChecks(key=unconfirmed, request_state=request.state))
    request.state.subject = subject
    return subject


async def _user_subject(request: Request) -> AuthSubject:
    token = bearer_token(request)
    if lookup.looks_like_api_key(token):
        raise AuthenticationError(
            "API keys are for /api/v1; sign in to use the internal API", code="invalid_token"
        )
    state = app_state(request)
    claims = decode_access_claims(state.settings.secret_key_value, token)
    async with transaction(state.session_factory) as session:
        user = await repository.get_user(session, claims.user_id)
        ended = claims.session_id is not None and not await repository.session_is_active(
            session, claims.session_id
        )
    if user is None or not user.is_active:
        raise AuthenticationError("User is disabled or no longer exists", code="user_inactive")
    if ended:
        raise AuthenticationError("This session has ended; sign in again", code="session_revoked")
    subject = AuthSubject(kind="user", user=user, session_id=claims.session_id)
    request.state.subject = subject
    await _rate_limit(request, state, subject)
    return subject


async def _admin_subject(
    subject: Annotated[AuthSubject, Depends(_user_subject)],
) -> AuthSubject:
    if not subject.is_admin:
        raise PermissionDeniedError("Administrator role required", code="admin_required")
    return subject


class ScopeRequirement:
    """An API-key dependency that also demands ``scopes`` (see :func:`require_scopes`)."""

    def __init__(self, scopes: tuple[str, ...]) -> None:
        self.scopes = scopes

    async def __call__(
        self, subject: Annotated[AuthSubject, Depends(_api_key_subject)]
    ) -> AuthSubject:
        self.check(subject)
        return subject

    def check(self, subject: AuthSubject) -> None:
        if not subject.has_scopes(*self.scopes):
            missing = sorted(set(self.scopes) - subject.scopes)
            raise PermissionDeniedError(
                f"This API key lacks the scope(s): {', '.join(missing)}",
                code="insufficient_scope",
            )

    def __repr__(self) -> str:
        return f"require_scopes{self.scopes!r}"


class MeteredScopeRequirement(ScopeRequirement):
    """:class:`ScopeRequirement` for routes that pass the subject to the gateway, which may
    count the request and confirm the key itself (see :func:`metered_api_key_subject`)."""

    async def __call__(  # type: ignore[override]
        self,
        request: Request,
        subject: Annotated[AuthSubject, Depends(metered_api_key_subject)],
    ) -> AuthSubject:
        if subject.has_scopes(*self.scopes):
            return subject
        from enclava.llm import admission

        state = app_state(request)
        # A refusal is decided on the key as it is now, and the refused request is counted.
        if not await admission.complete(state, subject):
            subject = await reauthenticate_metered(request)
            if subject.has_scopes(*self.scopes):
                return subject
            await admission.complete(state, subject)
        self.check(subject)
        return subject

    def __repr__(self) -> str:
        return f"require_scopes{self.scopes!r}, metered"


def require_scopes(*scopes: str, metered: bool = False) -> ScopeRequirement:
    """An API-key dependency that also demands ``scopes``:
    ``subject: Annotated[AuthSubject, Depends(require_scopes("llm.chat"))]``.

    ``metered=True`` is for routes that hand the subject to the gateway and call
    ``admission.complete`` when they fail before reaching it."""
    if metered:
        return MeteredScopeRequirement(tuple(scopes))
    return ScopeRequirement(tuple(scopes))


ApiKeySubject = Annotated[AuthSubject, Depends(_api_key_subject)]
UserSubject = Annotated[AuthSubject, Depends(_user_subject)]
AdminSubject = Annotated[AuthSubject, Depends(_admin_subject)]
