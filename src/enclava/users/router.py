"""User administration (admins only)."""

from __future__ import annotations

from fastapi import APIRouter, Query

from enclava.auth import repository, service
from enclava.auth.dependencies import AdminSubject
from enclava.auth.schemas import UserCreate, UserRead
from enclava.db import DbSession

router = APIRouter(prefix="/users", tags=["users"])


@router.get("", response_model=list[UserRead])
async def list_users(
    _admin: AdminSubject,
    session: DbSession,
    offset: int = Query(0, ge=0),
    limit: int = Query(50, ge=1, le=500),
) -> list[UserRead]:
    users = await repository.list_users(session, offset=offset, limit=limit)
    return [UserRead.model_validate(u) for u in users]


@router.post("", response_model=UserRead, status_code=201)
async def create_user(body: UserCreate, _admin: AdminSubject, session: DbSession) -> UserRead:
    user = await service.create_user(
        session, email=body.email, password=body.password, role=body.role, full_name=body.full_name
    )
    return UserRead.model_validate(user)
