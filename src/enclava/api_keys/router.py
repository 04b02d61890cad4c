"""API keys on the internal API: users manage their own keys, administrators everyone's."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request, Response

from enclava.api_keys import lookup, service
from enclava.api_keys.schemas import ApiKeyCreate, ApiKeyCreated, ApiKeyRead
from enclava.auth.dependencies import UserSubject, app_state
from enclava.db import DbSession, transaction
from enclava.kit.pagination import Offset

router = APIRouter(prefix="/api-keys", tags=["api-keys"])


@router.post("", response_model=ApiKeyCreated, status_code=201)
async def create_api_key(
    body: ApiKeyCreate, subject: UserSubject, session: DbSession, request: Request
) -> ApiKeyCreated:
    api_key, plaintext = await service.create_for_subject(
        session,
        subject,
        secret_key=app_state(request).settings.secret_key_value,
        owner_id=body.user_id,
        name=body.name,
        scopes=list(body.scopes) if body.scopes else None,
        tier=body.tier,
        allowed_models=body.allowed_models,
        confidential_only=body.confidential_only,
        expires_at=body.expires_at,
        rate_limit_per_minute=body.rate_limit_per_minute,
        rate_limit_per_hour=body.rate_limit_per_hour,
        request=request,
    )
    return ApiKeyCreated(**ApiKeyRead.model_validate(api_key).model_dump(), key=plaintext)


@router.get("", response_model=list[ApiKeyRead])
async def list_api_keys(
    subject: UserSubject,
    session: DbSession,
    user_id: uuid.UUID | None = None,
    include_revoked: bool = False,
    offset: Offset = 0,
    limit: int = Query(100, ge=1, le=500),
) -> list[ApiKeyRead]:
    keys = await service.list_keys(
        session,
        subject,
        user_id=user_id,
        include_revoked=include_revoked,
        offset=offset,
        limit=limit,
    )
    return [ApiKeyRead.model_validate(k) for k in keys]


@router.get("/{key_id}", response_model=ApiKeyRead)
async def get_api_key(key_id: uuid.UUID, subject: UserSubject, session: DbSession) -> ApiKeyRead:
    return ApiKeyRead.model_validate(await service.get_key(session, subject, key_id))


# Revocation and rotation commit before invalidating the key cache, so no instance can cache
# the old row again after the invalidation: hence their own transaction instead of DbSession.


@router.delete("/{key_id}", status_code=204)
async def revoke_api_key(key_id: uuid.UUID, subject: UserSubject, request: Request) -> Response:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        key_hash = await service.revoke_key(session, subject, key_id, request=request)
    await lookup.invalidate(state.cache, key_hash)
    return Response(status_code=204)


@router.post("/{key_id}/rotate", response_model=ApiKeyCreated)
async def rotate_api_key(
    key_id: uuid.UUID, subject: UserSubject, request: Request
) -> ApiKeyCreated:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        api_key, plaintext, old_hash = await service.rotate_key(
            session,
            subject,
            key_id,
            secret_key=state.settings.secret_key_value,
            request=request,
        )
        created = ApiKeyCreated(**ApiKeyRead.model_validate(api_key).model_dump(), key=plaintext)
    await lookup.invalidate(state.cache, old_hash)
    return created
