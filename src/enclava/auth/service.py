"""Users, password sign-in and sign-in sessions (rotating refresh tokens).

A sign-in starts a *session*: a family of refresh tokens. Each refresh uses up the presented
token and issues the next one in the family. Presenting a used token again means two parties
hold it (it leaked), so the whole family is revoked and both are signed out. Access tokens carry
the family id (``sid``), so ending a session also ends its access tokens at once.

Failed sign-ins and detected token reuse write audit rows and counters and then raise; the
routers commit that bookkeeping even though the request fails (see ``auth/router.py``).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from fastapi import Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit import service as audit
from enclava.auth import passwords, repository
from enclava.auth.lockout import LoginGuard
from enclava.auth.subject import AuthSubject
from enclava.auth.tokens import create_access_token
from enclava.errors import AuthenticationError, BadRequestError, ConflictError, RateLimitError
from enclava.kit.crypto import keyed_hash, random_token
from enclava.kit.time import utcnow
from enclava.models import RefreshToken as RefreshTokenRow
from enclava.models import User

ROLES = ("admin", "user")
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
REFRESH_PREFIX = "ert_"
_MAX_REFRESH_TOKEN_LENGTH = 256


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequestError(
            f"Password must be at least {MIN_PASSWORD_LENGTH} characters", param="password"
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        raise BadRequestError("Password is too long", param="password")


async def hash_password(password: str) -> str:
    # Argon2 is deliberately slow (~0.1 s): keep it off the event loop.
    return await asyncio.to_thread(passwords.hash_password, password)


async def verify_password(password_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(passwords.verify_password, password_hash, password)


async def create_user(
    session: AsyncSession,
    *,
    email: str,
    password: str,
    role: str = "user",
    full_name: str | None = None,
) -> User:
    if role not in ROLES:
        raise BadRequestError(f"Unknown role {role!r}", param="role")
    check_password_strength(password)
    email = email.strip().lower()
    if await repository.get_user_by_email(session, email) is not None:
        raise ConflictError("A user with this email already exists", code="email_taken")
    user = User(
        email=email,
        password_hash=await hash_password(password),
        role=role,
        full_name=full_name,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError("A user with this email already exists", code="email_taken")
    return user


def _guard(request: Request | None) -> LoginGuard | None:
    if request is None:
        return None
    state = request.app.state.enclava
    return LoginGuard(state.cache, state.settings)


async def authenticate(
    session: AsyncSession, *, email: str, password: str, request: Request | None = None
) -> User:
    """Check a password sign-in. Unknown emails cost the same time as wrong passwords.

    With ``request``, attempts are counted for lockout (per account and per IP) and audited.
    """
    email = email.strip().lower()
    guard = _guard(request)
    ip = audit.client_ip(request)
    if guard is not None:
        verdict = await guard.admit(email, ip)
        if verdict.locked:
            if verdict.just_locked:
                audit.record(
                    session,
                    action="auth.login",
                    success=False,
                    details={"email": email, "reason": "locked_out"},
                    request=request,
                )
            raise RateLimitError(
                "Too many sign-in attempts; try again later",
                code="login_locked",
                headers={"Retry-After": str(guard.window_s)},
            )
    user = await repository.get_user_by_email(session, email)
    ok = await verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        if request is not None:
            reason = "unknown_email" if user is None else "wrong_password" if not ok else "disabled"
            audit.record(
                session,
                action="auth.login",
                user_id=user.id if user else None,
                success=False,
                details={"email": email, "reason": reason},
                request=request,
            )
        raise AuthenticationError("Incorrect email or password", code="invalid_credentials")
    if guard is not None:
        await guard.succeeded(email, ip)
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = await hash_password(password)
    user.last_login_at = utcnow()
    if request is not None:
        audit.record(session, action="auth.login", user_id=user.id, request=request)
    return user


async def issue_tokens(
    session: AsyncSession,
    *,
    secret_key: str,
    user: User,
    access_ttl_s: int,
    refresh_ttl_s: int,
    family_id: uuid.UUID | None = None,
) -> tuple[str, str]:
    """A new access token and a refresh token in ``family_id`` (a new family for a sign-in)."""
    family_id = family_id or uuid.uuid4()
    refresh_plain = REFRESH_PREFIX + random_token(32)
    now = utcnow()
    session.add(
        RefreshTokenRow(
            user_id=user.id,
            family_id=family_id,
            token_hash=keyed_hash(secret_key, refresh_plain),
            created_at=now,
            expires_at=now + timedelta(seconds=refresh_ttl_s),
        )
    )
    await session.flush()
    access = create_access_token(secret_key, user.id, access_ttl_s, session_id=family_id)
    return access, refresh_plain


async def _find_refresh_token(
    session: AsyncSession, secret_key: str, token: str
) -> RefreshTokenRow | None:
    if not token.startswith(REFRESH_PREFIX) or len(token) > _MAX_REFRESH_TOKEN_LENGTH:
        return None
    return await repository.get_refresh_token(session, keyed_hash(secret_key, token))


async def refresh(
    session: AsyncSession,
    *,
    secret_key: str,
    refresh_token: str,
    access_ttl_s: int,
    refresh_ttl_s: int,
    request: Request | None = None,
) -> tuple[str, str]:
    """Trade a refresh token for a new pair in the same session; reuse ends the session."""
    row = await _find_refresh_token(session, secret_key, refresh_token)
    if row is None:
        raise AuthenticationError("Invalid refresh token", code="invalid_refresh_token")
    if row.revoked_at is not None:
        raise AuthenticationError("This session has ended; sign in again", code="session_revoked")
    now = utcnow()
    if row.expires_at <= now:
        raise AuthenticationError("Refresh token expired; sign in again", code="refresh_expired")
    if row.used_at is not None or not await repository.claim_refresh_token(session, row.id, now):
        await repository.revoke_families(session, now=now, family_ids=[row.family_id])
        audit.record(
            session,
            action="auth.refresh_token_reuse",
            user_id=row.user_id,
            success=False,
            resource_type="session",
            resource_id=row.family_id,
            request=request,
        )
        raise AuthenticationError(
            "This refresh token was already used, so the session has been ended; sign in again",
            code="refresh_token_reused",
        )
    user = await repository.get_user(session, row.user_id)
    if user is None or not user.is_active:
        raise AuthenticationError("User is disabled or no longer exists", code="user_inactive")
    return await issue_tokens(
        session,
        secret_key=secret_key,
        user=user,
        access_ttl_s=access_ttl_s,
        refresh_ttl_s=refresh_ttl_s,
        family_id=row.family_id,
    )


async def logout(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    secret_key: str,
    refresh_token: str | None = None,
    all_sessions: bool = False,
    request: Request | None = None,
) -> None:
    """End the caller's session (the token's, and the refresh token's), or all of them."""
    now = utcnow()
    if all_sessions:
        await repository.revoke_families(session, now=now, user_id=subject.user_id)
    else:
        families = {subject.session_id} if subject.session_id else set()
        if refresh_token:
            row = await _find_refresh_token(session, secret_key, refresh_token)
            # Someone else's token is treated as unknown: no hint that it exists.
            if row is not None and row.user_id == subject.user_id:
                families.add(row.family_id)
        if not families:
            raise BadRequestError(
                "No session to end: pass the refresh_token, or all_sessions=true",
                param="refresh_token",
            )
        await repository.revoke_families(
            session, now=now, family_ids=sorted(families), user_id=subject.user_id
        )
    audit.record(
        session,
        action="auth.logout",
        subject=subject,
        details={"all_sessions": all_sessions},
        request=request,
    )
