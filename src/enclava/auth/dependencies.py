"""Authentication dependencies: endpoints opt in by naming the subject (and scopes) they need.

``/api/v1`` takes API keys; ``/api-internal/v1`` takes JWT access tokens. Both come only in the
``Authorization: Bearer`` header. The user is loaded on every request, so a disabled user or a
revoked key loses access at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from enclava.api_keys import service as api_key_service
from enclava.auth import repository
from enclava.auth.subject import AuthSubject
from enclava.auth.tokens import decode_access_token
from enclava.db import DbSession
from enclava.errors import AuthenticationError, PermissionDeniedError
from enclava.state import AppState

_MAX_CREDENTIAL_LENGTH = 4096


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationError(
            "Missing Authorization: Bearer header", code="missing_credentials"
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > _MAX_CREDENTIAL_LENGTH:
        raise AuthenticationError("Malformed Authorization header", code="invalid_credentials")
    return token


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.enclava
    return state


async def _api_key_subject(request: Request, session: DbSession) -> AuthSubject:
    token = bearer_token(request)
    state = app_state(request)
    api_key, owner = await api_key_service.verify_key(
        session, state.settings.secret_key_value, token
    )
    subject = AuthSubject(kind="api_key", user=owner, api_key=api_key)
    request.state.subject = subject
    return subject


async def _user_subject(request: Request, session: DbSession) -> AuthSubject:
    token = bearer_token(request)
    if api_key_service.looks_like_api_key(token):
        raise AuthenticationError(
            "API keys are for /api/v1; sign in to use the internal API", code="invalid_token"
        )
    user_id = decode_access_token(app_state(request).settings.secret_key_value, token)
    user = await repository.get_user(session, user_id)
    if user is None or not user.is_active:
        raise AuthenticationError("User is disabled or no longer exists", code="user_inactive")
    subject = AuthSubject(kind="user", user=user)
    request.state.subject = subject
    return subject


async def _admin_subject(
    subject: Annotated[AuthSubject, Depends(_user_subject)],
) -> AuthSubject:
    if not subject.is_admin:
        raise PermissionDeniedError("Administrator role required", code="admin_required")
    return subject


def require_scopes(*scopes: str) -> Callable[..., Awaitable[AuthSubject]]:
    """An API-key dependency that also demands ``scopes``."""

    async def dependency(
        subject: Annotated[AuthSubject, Depends(_api_key_subject)],
    ) -> AuthSubject:
        if not subject.has_scopes(*scopes):
            raise PermissionDeniedError(
                f"This API key lacks the scope(s): {', '.join(scopes)}", code="insufficient_scope"
            )
        return subject

    return dependency


ApiKeySubject = Annotated[AuthSubject, Depends(_api_key_subject)]
UserSubject = Annotated[AuthSubject, Depends(_user_subject)]
AdminSubject = Annotated[AuthSubject, Depends(_admin_subject)]
