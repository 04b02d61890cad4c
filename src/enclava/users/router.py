"""User administration (admins), and each user's own account."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request, Response

from enclava.api_keys import lookup
from enclava.auth.dependencies import AdminSubject, UserSubject, app_state
from enclava.auth.schemas import UserCreate, UserRead
from enclava.db import DbSession, transaction
from enclava.kit.pagination import Offset
from enclava.users import service
from enclava.users.schemas import PasswordChange, UserUpdate

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=list[UserRead])
async def list_users(
    admin: AdminSubject,
    session: DbSession,
    offset: Offset = 0,
    limit: int = Query(50, ge=1, le=500),
) -> list[UserRead]:
    users = await service.list_users(session, admin, offset=offset, limit=limit)
    return [UserRead.model_validate(u) for u in users]


@router.post("", response_model=UserRead, status_code=201)
async def create_user(
    body: UserCreate, admin: AdminSubject, session: DbSession, request: Request
) -> UserRead:
    user = await service.create_user(session, admin, body, request=request)
    return UserRead.model_validate(user)


@router.post("/me/password", status_code=204)
async def change_own_password(
    body: PasswordChange, subject: UserSubject, session: DbSession, request: Request
) -> Response:
    await service.change_own_password(session, subject, body, request=request)
    return Response(status_code=204)


@router.get("/{user_id}", response_model=UserRead)
async def get_user(user_id: uuid.UUID, subject: UserSubject, session: DbSession) -> UserRead:
    return UserRead.model_validate(await service.get_user(session, subject, user_id))


# Changing or deleting a user commits before invalidating the cached snapshots of their keys
# (which hold the owner too), so no instance can cache the old user again after the
# invalidation: hence their own transaction instead of DbSession.


@router.patch("/{user_id}", response_model=UserRead)
async def update_user(
    user_id: uuid.UUID, body: UserUpdate, admin: AdminSubject, request: Request
) -> UserRead:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        user = await service.update_user(session, admin, user_id, body, request=request)
        updated = UserRead.model_validate(user)
    await lookup.invalidate_owner(state, user_id)
    return updated


@router.delete("/{user_id}", status_code=204)
async def delete_user(user_id: uuid.UUID, admin: AdminSubject, request: Request) -> Response:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        key_hashes = await service.delete_user(session, admin, user_id, request=request)
    await lookup.invalidate(state.cache, *key_hashes)
    return Response(status_code=204)
