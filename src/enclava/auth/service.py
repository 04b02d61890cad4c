"""Users and password logins."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth import passwords, repository
from enclava.auth.tokens import create_access_token
from enclava.errors import AuthenticationError, BadRequestError, ConflictError
from enclava.kit.crypto import keyed_hash, random_token
from enclava.kit.time import utcnow
from enclava.models import RefreshToken, User

ROLES = ("admin", "user")
MIN_PASSWORD_LENGTH = 8
REFRESH_PREFIX = "ert_"


def _check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise BadRequestError(
            f"Password must be at least {MIN_PASSWORD_LENGTH} characters", param="password"
        )
    if len(password) > 1024:
        raise BadRequestError("Password is too long", param="password")


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
    _check_password_strength(password)
    email = email.strip().lower()
    if await repository.get_user_by_email(session, email) is not None:
        raise ConflictError("A user with this email already exists", code="email_taken")
    user = User(
        email=email,
        password_hash=passwords.hash_password(password),
        role=role,
        full_name=full_name,
    )
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:
        raise ConflictError("A user with this email already exists", code="email_taken")
    return user


async def authenticate(session: AsyncSession, *, email: str, password: str) -> User:
    """Check a password login. Unknown emails cost the same time as wrong passwords."""
    user = await repository.get_user_by_email(session, email)
    ok = passwords.verify_password(user.password_hash if user else None, password)
    if user is None or not ok or not user.is_active:
        raise AuthenticationError("Incorrect email or password", code="invalid_credentials")
    if passwords.needs_rehash(user.password_hash):
        user.password_hash = passwords.hash_password(password)
    user.last_login_at = utcnow()
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
    """A new access token and a refresh token in ``family_id`` (a new family for a login)."""
    refresh_plain = REFRESH_PREFIX + random_token(32)
    now = utcnow()
    session.add(
        RefreshToken(
            user_id=user.id,
            family_id=family_id or uuid.uuid4(),
            token_hash=keyed_hash(secret_key, refresh_plain),
            created_at=now,
            expires_at=now + timedelta(seconds=refresh_ttl_s),
        )
    )
    await session.flush()
    return create_access_token(secret_key, user.id, access_ttl_s), refresh_plain
