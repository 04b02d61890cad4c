"""API keys: creation, listing, rotation and revocation, with their rules.

A key is ``ek_`` plus 32 random bytes (URL-safe base64). Only its HMAC-SHA256, keyed with the
secret key, is stored; the plaintext is returned once, at creation or rotation. A key's scopes
never exceed what its owner holds (checked here and again on every request); the premium tier
and per-key rate-limit overrides are granted by administrators only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.api_keys import repository
from enclava.api_keys.lookup import KEY_PREFIX, hash_key, looks_like_api_key
from enclava.audit import service as audit
from enclava.auth import repository as users_repository
from enclava.auth.subject import ALL_SCOPES, DEFAULT_KEY_SCOPES, AuthSubject, user_scopes
from enclava.errors import BadRequestError, ConflictError, NotFoundError, PermissionDeniedError
from enclava.kit.crypto import random_token
from enclava.kit.time import utcnow
from enclava.models import ApiKey, User

__all__ = [
    "KEY_PREFIX",
    "TIERS",
    "create_key",
    "generate_key",
    "hash_key",
    "looks_like_api_key",
]

TIERS = ("standard", "premium")
_DISPLAY_PREFIX_LENGTH = 12


def generate_key() -> str:
    return KEY_PREFIX + random_token(32)


def validate_scopes(scopes: Iterable[str] | None, *, holders: Iterable[User] = ()) -> list[str]:
    """The scopes to store: the defaults when none are given; each must be known and held."""
    wanted = set(scopes) if scopes else set(DEFAULT_KEY_SCOPES)
    unknown = sorted(wanted - ALL_SCOPES)
    if unknown:
        raise BadRequestError(f"Unknown scopes: {', '.join(unknown)}", param="scopes")
    for holder in holders:
        beyond = sorted(wanted - user_scopes(holder))
        if beyond:
            raise PermissionDeniedError(
                f"A key cannot hold scopes its creator or owner lacks: {', '.join(beyond)}",
                code="scope_not_held",
            )
    return sorted(wanted)


def _clean_models(models: Iterable[str] | None) -> list[str]:
    cleaned = sorted({m.strip() for m in models or [] if m.strip()})
    if any(len(m) > 200 for m in cleaned):
        raise BadRequestError("Model ids are at most 200 characters", param="allowed_models")
    return cleaned


async def create_key(
    session: AsyncSession,
    secret_key: str,
    owner: User,
    *,
    name: str,
    scopes: list[str] | None = None,
    tier: str = "standard",
    allowed_models: list[str] | None = None,
    confidential_only: bool = False,
    expires_at: datetime | None = None,
    rate_limit_per_minute: int | None = None,
    rate_limit_per_hour: int | None = None,
    creator: User | None = None,
) -> tuple[ApiKey, str]:
    """Create a key for ``owner``; returns the row and the plaintext key (shown once).

    No authorisation here beyond the scope ceiling: callers decide who may create for whom
    (:func:`create_for_subject` for the API; the CLI is an operator tool).
    """
    if tier not in TIERS:
        raise BadRequestError(f"Unknown tier {tier!r}; use standard or premium", param="tier")
    name = name.strip()
    if not name or len(name) > 200:
        raise BadRequestError("A key needs a name of 1 to 200 characters", param="name")
    if expires_at is not None and expires_at <= utcnow():
        raise BadRequestError("expires_at must be in the future", param="expires_at")
    for field, value in (
        ("rate_limit_per_minute", rate_limit_per_minute),
        ("rate_limit_per_hour", rate_limit_per_hour),
    ):
        if value is not None and value < 1:
            raise BadRequestError(f"{field} must be at least 1", param=field)
    if not owner.is_active:
        raise BadRequestError("The owner of a key must be an active user", param="user_id")
    holders = [owner] if creator is None else [owner, creator]
    plaintext = generate_key()
    api_key = ApiKey(
        user_id=owner.id,
        name=name,
        key_prefix=plaintext[:_DISPLAY_PREFIX_LENGTH],
        key_hash=hash_key(secret_key, plaintext),
        scopes=validate_scopes(scopes, holders=holders),
        tier=tier,
        allowed_models=_clean_models(allowed_models),
        confidential_only=confidential_only,
        expires_at=expires_at,
        rate_limit_per_minute=rate_limit_per_minute,
        rate_limit_per_hour=rate_limit_per_hour,
    )
    session.add(api_key)
    await session.flush()
    return api_key, plaintext


async def create_for_subject(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    secret_key: str,
    owner_id: uuid.UUID | None,
    name: str,
    scopes: list[str] | None,
    tier: str,
    allowed_models: list[str] | None,
    confidential_only: bool,
    expires_at: datetime | None,
    rate_limit_per_minute: int | None,
    rate_limit_per_hour: int | None,
    request: Request | None = None,
) -> tuple[ApiKey, str]:
    """A key created through the API: for yourself, or (admins) for anyone."""
    owner: User | None = subject.user
    if owner_id is not None and owner_id != subject.user_id:
        owner = (
            await users_repository.get_user(session, owner_id) if subject.sees_everything else None
        )
        if owner is None:
            raise NotFoundError("User not found", param="user_id")
    assert owner is not None
    if not subject.sees_everything:
        if tier != "standard":
            raise PermissionDeniedError(
                "Only administrators can grant the premium tier", code="admin_required"
            )
        if rate_limit_per_minute is not None or rate_limit_per_hour is not None:
            raise PermissionDeniedError(
                "Only administrators can set per-key rate limits", code="admin_required"
            )
    api_key, plaintext = await create_key(
        session,
        secret_key,
        owner,
        name=name,
        scopes=scopes,
        tier=tier,
        allowed_models=allowed_models,
        confidential_only=confidential_only,
        expires_at=expires_at,
        rate_limit_per_minute=rate_limit_per_minute,
        rate_limit_per_hour=rate_limit_per_hour,
        creator=subject.user,
    )
    audit.record(
        session,
        action="api_key.create",
        subject=subject,
        resource_type="api_key",
        resource_id=api_key.id,
        details={
            "owner_id": str(owner.id),
            "name": api_key.name,
            "scopes": api_key.scopes,
            "tier": api_key.tier,
            "confidential_only": api_key.confidential_only,
        },
        request=request,
    )
    return api_key, plaintext


async def list_keys(
    session: AsyncSession,
    subject: AuthSubject,
    *,
    user_id: uuid.UUID | None = None,
    include_revoked: bool = False,
    offset: int = 0,
    limit: int = 100,
) -> list[ApiKey]:
    return await repository.list_visible(
        session,
        subject,
        user_id=user_id,
        include_revoked=include_revoked,
        offset=offset,
        limit=limit,
    )


async def get_key(session: AsyncSession, subject: AuthSubject, key_id: uuid.UUID) -> ApiKey:
    api_key = await repository.get_visible(session, subject, key_id)
    if api_key is None:
        raise NotFoundError("API key not found")
    return api_key


async def revoke_key(
    session: AsyncSession,
    subject: AuthSubject,
    key_id: uuid.UUID,
    *,
    request: Request | None = None,
) -> str:
    """Revoke a key; returns its hash so the caller can invalidate caches after the commit."""
    api_key = await repository.get_visible(session, subject, key_id, for_update=True)
    if api_key is None:
        raise NotFoundError("API key not found")
    if api_key.revoked_at is None:
        api_key.revoked_at = utcnow()
        audit.record(
            session,
            action="api_key.revoke",
            subject=subject,
            resource_type="api_key",
            resource_id=api_key.id,
            details={"owner_id": str(api_key.user_id), "name": api_key.name},
            request=request,
        )
        await session.flush()
    return api_key.key_hash


async def rotate_key(
    session: AsyncSession,
    subject: AuthSubject,
    key_id: uuid.UUID,
    *,
    secret_key: str,
    request: Request | None = None,
) -> tuple[ApiKey, str, str]:
    """Give a key a new secret; the old one stops working. Returns (row, new key, old hash).

    The row (id, settings, budgets, usage history) stays the same.
    """
    api_key = await repository.get_visible(session, subject, key_id, for_update=True)
    if api_key is None:
        raise NotFoundError("API key not found")
    if api_key.revoked_at is not None:
        raise ConflictError("A revoked key cannot be rotated", code="api_key_revoked")
    old_hash = api_key.key_hash
    plaintext = generate_key()
    api_key.key_hash = hash_key(secret_key, plaintext)
    api_key.key_prefix = plaintext[:_DISPLAY_PREFIX_LENGTH]
    audit.record(
        session,
        action="api_key.rotate",
        subject=subject,
        resource_type="api_key",
        resource_id=api_key.id,
        details={"owner_id": str(api_key.user_id), "name": api_key.name},
        request=request,
    )
    await session.flush()
    return api_key, plaintext, old_hash
