"""Resolving a presented API key to its subject, with a short-lived cache of keys and owners.

Only the HMAC of a key is ever stored or used as a cache key. One cache entry per key hash
holds a snapshot of the key's row *and* of its owner (every column but the password hash), so
a request whose key is cached costs one cache GET and no database read. An entry lives for
``api_key_cache_ttl_s``.

Invalidation replaces the entry with a *tombstone* carrying a fresh random generation. It runs
after the change is committed: revoking or rotating a key (``api_keys/router.py``), and
changing, disabling or deleting a user (``users/router.py`` through :func:`invalidate_owner`).
A lookup that misses reads the key and its owner from the database and then installs its
snapshot only if the entry still holds what it saw before the read (absent, a tombstone or an
unreadable snapshot): a compare-and-set (``Cache.set_if``; one Lua script on Redis). So a lookup
that read the database before a change committed can never install a stale snapshot once the
change's tombstone is written, on any instance sharing the cache. Tombstones outlive any lookup
that could still be comparing against an older value (a lookup slower than that skips caching).

On Redis each instance also keeps the exact bytes of the entries it read (:class:`NearCache`).
:func:`authenticate_unconfirmed` answers from that copy without a round trip, and its caller
must confirm the copy against the shared entry before the subject spends or reveals anything:
the gateway's admission does, in the script that also counts and reserves
(``enclava.llm.admission``). A tombstone never equals a copy, so an invalidation reaches such
calls exactly as it reaches :func:`authenticate`.

A change made straight in the database (not through the services) is seen when the entry
expires, within ``api_key_cache_ttl_s``; call :func:`invalidate_owner` or :func:`invalidate`
after such a change to make it immediate. The database reads on a miss run outside any write
transaction, so on SQLite they do not queue for the write lock.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
from redis.exceptions import RedisError
from sqlalchemy import Uuid, inspect

from enclava.api_keys import repository
from enclava.api_keys.last_used import STATE_KEY as LAST_USED_KEY
from enclava.api_keys.last_used import LastUsedRecorder
from enclava.auth.subject import AuthSubject, UnconfirmedKey
from enclava.db import read_only_engine
from enclava.errors import AuthenticationError, ServiceUnavailableError
from enclava.kit.cache import Cache, RedisCache
from enclava.kit.crypto import keyed_hash
from enclava.kit.time import utcnow
from enclava.models import ApiKey, User
from enclava.models.base import UTCDateTime
from enclava.state import AppState

logger = logging.getLogger(__name__)

KEY_PREFIX = "ek_"
# Prefix plus a URL-safe random body; anything else is refused before hashing.
KEY_PATTERN = re.compile(r"ek_[A-Za-z0-9_-]{20,120}")
_JWT_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# Bump when the snapshot's shape changes: entries of another version are misses.
_SNAPSHOT_VERSION = 2
# A tombstone must outlive every lookup that read the database before it was written; a lookup
# that took longer than _MAX_CACHING_LOOKUP_S does not cache what it read.
_TOMBSTONE_TTL_S = 600.0
_MAX_CACHING_LOOKUP_S = 60.0
# Where this instance's copies of key cache entries live in ``AppState.extras``.
NEAR_CACHE_KEY = "api_key_near_cache"


def hash_key(secret_key: str, key: str) -> str:
    return keyed_hash(secret_key, key)


def looks_like_api_key(token: str) -> bool:
    return token.startswith(KEY_PREFIX)


def _entry_key(key_hash: str) -> str:
    return f"apikey:{key_hash}"


def _columns(model: Any, skip: frozenset[str] = frozenset()) -> list[Any]:
    return [attr for attr in inspect(model).column_attrs if attr.key not in skip]


# The owner's password hash never goes into the cache.
_OWNER_SKIPPED = frozenset({"password_hash"})
_KEY_ATTRS = _columns(ApiKey)
_OWNER_ATTRS = _columns(User, _OWNER_SKIPPED)


def _dump(row: Any, attrs: list[Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attr in attrs:
        value = getattr(row, attr.key)
        if isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, uuid.UUID):
            value = str(value)
        values[attr.key] = value
    return values


def _decoders(attrs: list[Any]) -> list[tuple[str, Any]]:
    """Each column's name and how its dumped value is read back (None: as it is)."""
    decoders: list[tuple[str, Any]] = []
    for attr in attrs:
        column_type = attr.columns[0].type
        decode: Any = None
        if isinstance(column_type, UTCDateTime):
            decode = datetime.fromisoformat
        elif isinstance(column_type, Uuid):
            decode = uuid.UUID
        decoders.append((attr.key, decode))
    return decoders


_KEY_DECODERS = _decoders(_KEY_ATTRS)
_OWNER_DECODERS = _decoders(_OWNER_ATTRS)


def _load(model: Any, values: Any, decoders: list[tuple[str, Any]], **extra: Any) -> Any | None:
    """The detached row a dump was taken from, or None if the table changed since.

    Built as the ORM builds rows it loads (a bare instance, its columns set in its ``__dict__``)
    rather than through the mapped constructor, whose per-attribute events cost ~15x more and
    would run on every authenticated call. Like a constructed one, the object is transient:
    reading it is free, changing it means loading the row in a session.
    """
    if not isinstance(values, dict):
        return None
    fields: dict[str, Any] = dict(extra)
    for key, decode in decoders:
        if key not in values:
            return None
        value = values[key]
        fields[key] = value if value is None or decode is None else decode(value)
    row = model.__mapper__.class_manager.new_instance()
    row.__dict__.update(fields)
    return row


def snapshot(api_key: ApiKey, owner: User) -> dict[str, Any]:
    """The cache entry for a key and its owner."""
    return {
        "v": _SNAPSHOT_VERSION,
        "key": _dump(api_key, _KEY_ATTRS),
        "owner": _dump(owner, _OWNER_ATTRS),
    }


def restore(entry: Any) -> tuple[ApiKey, User] | None:
    """The key and owner of a snapshot (detached), or None for a tombstone, an older format or
    anything unreadable: all of those are misses."""
    if not isinstance(entry, dict) or entry.get("v") != _SNAPSHOT_VERSION:
        return None
    try:
        api_key = _load(ApiKey, entry.get("key"), _KEY_DECODERS)
        owner = _load(User, entry.get("owner"), _OWNER_DECODERS, password_hash="")
    except (TypeError, ValueError):
        return None
    if api_key is None or owner is None:
        return None
    return api_key, owner


def _tombstone() -> dict[str, Any]:
    return {"tombstone": secrets.token_hex(8)}


async def invalidate(cache: Cache, *key_hashes: str) -> None:
    """Make every instance re-read these keys and their owner. Call after the change is
    committed; a lookup that read the database before then cannot cache what it read."""
    if not key_hashes:
        return
    try:
        await cache.set_many(
            {_entry_key(key_hash): _tombstone() for key_hash in key_hashes}, _TOMBSTONE_TTL_S
        )
    except (RedisError, OSError) as exc:
        # The change is committed; instances may serve the old snapshot until its TTL ends.
        logger.error("api key cache invalidation failed", extra={"error": type(exc).__name__})


async def invalidate_owner(state: AppState, user_id: uuid.UUID) -> None:
    """After a committed change to a user that authentication depends on (active, role,
    deletion...), make every instance re-read each of their keys with the user."""
    async with read_only_engine(state.engine).connect() as conn:
        key_hashes = await repository.owned_key_hashes(conn, user_id)
    await invalidate(state.cache, *key_hashes)


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


def _check_usable(api_key: ApiKey, owner: User) -> None:
    if api_key.revoked_at is not None:
        raise AuthenticationError("This API key has been revoked", code="api_key_revoked")
    if api_key.expires_at is not None and api_key.expires_at <= utcnow():
        raise AuthenticationError("This API key has expired", code="api_key_expired")
    if not owner.is_active:
        raise AuthenticationError(
            "The owner of this API key is disabled or deleted", code="api_key_owner_inactive"
        )


def _usable(api_key: ApiKey, owner: User) -> bool:
    try:
        _check_usable(api_key, owner)
    except AuthenticationError:
        return False
    return True


async def authenticate(state: AppState, token: str) -> AuthSubject:
    """The subject for a presented key, or a 401: one cache GET when the key is cached, else
    one read (key and owner) on a read-only connection."""
    _refuse_malformed(token)
    settings = state.settings
    key_hash = hash_key(settings.secret_key_value, token)
    caching = settings.api_key_cache_ttl_s > 0
    entry: Any = None
    raw: bytes | None = None
    seen_at = time.monotonic()
    if caching:
        try:
            if isinstance(state.cache, RedisCache):
                raw = await state.cache.get_raw(_entry_key(key_hash))
                entry = None if raw is None else orjson.loads(raw)
            else:
                entry = await state.cache.get(_entry_key(key_hash))
        except (RedisError, OSError) as exc:
            raise store_unavailable(exc)
    found = restore(entry)
    if found is None:
        found = await _load_and_cache(
            state, key_hash, seen=entry if caching else _NO_CACHE, seen_at=seen_at
        )
    elif raw is not None:
        near_cache(state).put(key_hash, raw)
    api_key, owner = found
    _check_usable(api_key, owner)
    _last_used(state).note(api_key.id)
    return AuthSubject(kind="api_key", user=owner, api_key=api_key)


async def authenticate_unconfirmed(
    state: AppState, token: str
) -> tuple[AuthSubject, UnconfirmedKey | None]:
    """Like :func:`authenticate`, but without a round trip when this instance holds a copy of
    the key's shared cache entry: the subject then comes from the copy, with an
    ``UnconfirmedKey`` that the caller must confirm is still the entry on Redis before the
    subject spends or reveals anything (the gateway's admission does, in the same round trip as
    its rate-limit count and reservation). Otherwise the subject is confirmed (``None``).

    A copy that would refuse the key is never used: refusals are always read afresh."""
    settings = state.settings
    if settings.api_key_cache_ttl_s > 0 and isinstance(state.cache, RedisCache):
        _refuse_malformed(token)
        key_hash = hash_key(settings.secret_key_value, token)
        raw = near_cache(state).get(key_hash, settings.api_key_cache_ttl_s)
        found = None if raw is None else restore(orjson.loads(raw))
        if raw is not None and found is not None and _usable(*found):
            api_key, owner = found
            # Last use is noted once the copy is confirmed (note_used), not before.
            subject = AuthSubject(kind="api_key", user=owner, api_key=api_key)
            return subject, UnconfirmedKey(state.cache.name(_entry_key(key_hash)), raw, key_hash)
    return await authenticate(state, token), None


class NearCache:
    """This instance's copies of the key cache entries it read from Redis (the exact bytes),
    bounded in number and age. A copy is only ever used together with a confirmation that the
    shared entry still holds the same bytes, so it cannot outlive a revocation."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max_entries = max_entries
        self._entries: dict[str, tuple[bytes, float]] = {}

    def get(self, key_hash: str, max_age_s: float) -> bytes | None:
        found = self._entries.get(key_hash)
        if found is None or time.monotonic() - found[1] > max_age_s:
            return None
        return found[0]

    def put(self, key_hash: str, raw: bytes) -> None:
        current = self._entries.get(key_hash)
        if current is not None and current[0] == raw:
            return  # keep its age: the copy is as old as the first read of these bytes
        self._entries.pop(key_hash, None)
        if len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest copy
        self._entries[key_hash] = (raw, time.monotonic())

    def drop(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)


def near_cache(state: AppState) -> NearCache:
    cache = state.extras.get(NEAR_CACHE_KEY)
    if cache is None:
        cache = state.extras[NEAR_CACHE_KEY] = NearCache()
    assert isinstance(cache, NearCache)
    return cache


_NO_CACHE = object()


async def _load_and_cache(
    state: AppState, key_hash: str, *, seen: Any, seen_at: float
) -> tuple[ApiKey, User]:
    """Read the key and its owner; cache them only over ``seen`` (what the GET returned)."""
    # A pure read: on SQLite it takes no turn on the single write lock.
    async with read_only_engine(state.engine).connect() as conn:
        found = await repository.read_key_and_owner(conn, key_hash)
    if found is None:
        raise AuthenticationError("Invalid API key", code="invalid_api_key")
    # Too slow to be sure the tombstone of a change made meanwhile is still there: don't cache.
    if seen is not _NO_CACHE and time.monotonic() - seen_at < _MAX_CACHING_LOOKUP_S:
        entry = snapshot(*found)
        try:
            stored = await state.cache.set_if(
                _entry_key(key_hash), seen, entry, state.settings.api_key_cache_ttl_s
            )
        except (RedisError, OSError) as exc:
            raise store_unavailable(exc)
        if stored and isinstance(state.cache, RedisCache):
            near_cache(state).put(key_hash, orjson.dumps(entry))  # the bytes now on Redis
    return found


def note_used(state: AppState, api_key_id: uuid.UUID) -> None:
    """Record that a key was used (debounced; written in the background)."""
    _last_used(state).note(api_key_id)


def _last_used(state: AppState) -> LastUsedRecorder:
    recorder = state.extras.get(LAST_USED_KEY)
    if recorder is None:
        # Apps built without the lifespan's recorder (scripts, tests of a bare state).
        recorder = LastUsedRecorder(
            state.session_factory, state.settings.api_key_last_used_debounce_s
        )
        state.extras[LAST_USED_KEY] = recorder
    assert isinstance(recorder, LastUsedRecorder)
    return recorder


def store_unavailable(exc: Exception) -> ServiceUnavailableError:
    logger.error("api key cache unreachable", extra={"error": type(exc).__name__})
    return ServiceUnavailableError(
        "Credential store unavailable; request refused", code="credential_store_unavailable"
    )
