"""API keys: generation, keyed hashing and verification."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from enclava.api_keys import repository
from enclava.auth.subject import ALL_SCOPES, DEFAULT_KEY_SCOPES
from enclava.errors import AuthenticationError, BadRequestError
from enclava.kit.crypto import keyed_hash, random_token
from enclava.kit.time import utcnow
from enclava.models import ApiKey, User

KEY_PREFIX = "ek_"
TIERS = ("standard", "premium")
_MAX_KEY_LENGTH = 128


def generate_key() -> str:
    return KEY_PREFIX + random_token(32)


def hash_key(secret_key: str, key: str) -> str:
    return keyed_hash(secret_key, key)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def validate_scopes(scopes: list[str] | None) -> list[str]:
    if not scopes:
        return list(DEFAULT_KEY_SCOPES)
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise BadRequestError(f"Unknown scopes: {', '.join(unknown)}", param="scopes")
    return sorted(set(scopes))


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
) -> tuple[ApiKey, str]:
    """Create a key for ``owner``; returns the row and the plaintext key (shown once)."""
    if tier not in TIERS:
        raise BadRequestError(f"Unknown tier {tier!r}", param="tier")
    plaintext = generate_key()
    api_key = ApiKey(
        user_id=owner.id,
        name=name,
        key_prefix=plaintext[:12],
        key_hash=hash_key(secret_key, plaintext),
        scopes=validate_scopes(scopes),
        tier=tier,
        allowed_models=sorted(set(allowed_models or [])),
        confidential_only=confidential_only,
    )
    session.add(api_key)
    await session.flush()
    return api_key, plaintext


async def verify_key(session: AsyncSession, secret_key: str, key: str) -> tuple[ApiKey, User]:
    """Resolve a presented key to its row and active owner, or raise a 401."""
    if not looks_like_api_key(key) or len(key) > _MAX_KEY_LENGTH:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    api_key = await repository.get_by_hash(session, hash_key(secret_key, key))
    if api_key is None or api_key.revoked_at is not None:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    if api_key.expires_at is not None and api_key.expires_at <= utcnow():
        raise AuthenticationError("API key expired", code="api_key_expired")
    owner = await session.get(User, api_key.user_id)
    if owner is None or not owner.is_active:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    return api_key, owner
