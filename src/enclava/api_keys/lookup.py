"""Resolving a presented API key to its subject, with a short-lived cache of key rows.

Only the HMAC of a key is ever stored or used as a cache key. The cache holds a snapshot of
the key's row for ``api_key_cache_ttl_s`` under a *generation* number; revoking or rotating a
key bumps the generation after the change is committed, so every instance sharing the cache
(Redis) misses at once and reads the committed row. A lookup that read the row before the
commit writes its snapshot under the old generation, where nobody reads it any more.

The owner is always loaded from the database, so disabling or deleting a user cuts off their
keys on the next request, without any cache invalidation. That read (and the key row on a cache
miss) runs outside any write transaction, so on SQLite it does not queue for the write lock.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError
from sqlalchemy import Uuid, inspect

from enclava.api_keys import repository
from enclava.auth.subject import AuthSubject
from enclava.db import read_only_engine, transaction
from enclava.errors import AuthenticationError, ServiceUnavailableError
from enclava.kit.cache import Cache
from enclava.kit.crypto import keyed_hash
from enclava.kit.time import utcnow
from enclava.models import ApiKey
from enclava.models.base import UTCDateTime
from enclava.state import AppState

logger = logging.getLogger(__name__)

KEY_PREFIX = "ek_"
# Prefix plus a URL-safe random body; anything else is refused before hashing.
KEY_PATTERN = re.compile(r"ek_[A-Za-z0-9_-]{20,120}")
_JWT_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_SNAPSHOT_VERSION = 1


def hash_key(secret_key: str, key: str) -> str:
    return keyed_hash(secret_key, key)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def _generation_key(key_hash: str) -> str:
    return f"apikey:gen:{key_hash}"


def _entry_key(key_hash: str, generation: int) -> str:
    return f"apikey:v{_SNAPSHOT_VERSION}:{key_hash}:{generation}"


def snapshot(row: ApiKey) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attr in inspect(ApiKey).column_attrs:
        value = getattr(row, attr.key)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        values[attr.key] = value
    return values


def restore(values: dict[str, Any]) -> ApiKey | None:
    """The row a snapshot was taken from (detached), or None if the table changed since."""
    fields: dict[str, Any] = {}
    for attr in inspect(ApiKey).column_attrs:
        if attr.key not in values:
            return None
        value = values[attr.key]
        column_type = attr.columns[0].type
        if value is not None and isinstance(column_type, UTCDateTime):
            value = datetime.fromisoformat(value)
        elif value is not None and isinstance(column_type, Uuid):
            value = uuid.UUID(value)
        fields[attr.key] = value
    return ApiKey(**fields)


async def invalidate(cache: Cache, key_hash: str) -> None:
    """Make every instance re-read this key's row. Call after the change is committed."""
    try:
        await cache.incr(_generation_key(key_hash))
    except (RedisError, OSError) as exc:
        # The change is committed; instances may serve the old snapshot until its TTL ends.
        logger.error("api key cache invalidation failed", extra={"error": type(exc).__name__})


def _refuse_malformed(token: str) -> None:
    if KEY_PATTERN.fullmatch(token):
        return
    if _JWT_PATTERN.fullmatch(token):
        raise AuthenticationError(
            "This is a sign-in token for the internal API; /api/v1 takes an API key (ek_...)",
            code="invalid_api_key",
        )
    raise AuthenticationError(
        "Invalid API key format: Enclava API keys start with 'ek_'", code="invalid_api_key"
    )


async def _cached_row(state: AppState, key_hash: str) -> tuple[ApiKey | None, int]:
    if state.settings.api_key_cache_ttl_s <= 0:
        return None, 0
    generation = int(await state.cache.get(_generation_key(key_hash)) or 0)
    values = await state.cache.get(_entry_key(key_hash, generation))
    return (restore(values) if isinstance(values, dict) else None), generation


def _check_usable(api_key: ApiKey) -> None:
    if api_key.revoked_at is not None:
        raise AuthenticationError("This API key has been revoked", code="api_key_revoked")
    if api_key.expires_at is not None and api_key.expires_at <= utcnow():
        raise AuthenticationError("This API key has expired", code="api_key_expired")


async def authenticate(state: AppState, token: str) -> AuthSubject:
    """The subject for a presented key, or a 401. Reads on its own read-only connection."""
    _refuse_malformed(token)
    settings = state.settings
    key_hash = hash_key(settings.secret_key_value, token)
    try:
        api_key, generation = await _cached_row(state, key_hash)
    except (RedisError, OSError) as exc:
        raise _store_unavailable(exc)
    from_database = api_key is None
    # Pure reads: on SQLite they take no turn on the single write lock.
    async with read_only_engine(state.engine).connect() as conn:
        if api_key is None:
            api_key = await repository.read_by_hash(conn, key_hash)
            if api_key is None:
                raise AuthenticationError("Invalid API key", code="invalid_api_key")
        _check_usable(api_key)
        owner = await repository.read_owner(conn, api_key.user_id)
    if owner is None or not owner.is_active:
        raise AuthenticationError(
            "The owner of this API key is disabled or deleted", code="api_key_owner_inactive"
        )
    try:
        if from_database and settings.api_key_cache_ttl_s > 0:
            await state.cache.set(
                _entry_key(key_hash, generation), snapshot(api_key), settings.api_key_cache_ttl_s
            )
        # Debounced: one write per key per interval across every instance sharing the cache.
        due = await state.cache.incr(
            f"apikey:used:{api_key.id}", ttl_s=settings.api_key_last_used_debounce_s
        )
    except (RedisError, OSError) as exc:
        raise _store_unavailable(exc)
    if due == 1:
        async with transaction(state.session_factory) as session:
            await repository.touch(session, api_key.id, utcnow())
    return AuthSubject(kind="api_key", user=owner, api_key=api_key)


def _store_unavailable(exc: Exception) -> ServiceUnavailableError:
    logger.error("api key cache unreachable", extra={"error": type(exc).__name__})
    return ServiceUnavailableError(
        "Credential store unavailable; request refused", code="credential_store_unavailable"
    )
