"""Sign-in for the internal API and the user's own profile."""

from __future__ import annotations

from fastapi import APIRouter, Request

from enclava.auth import service
from enclava.auth.dependencies import UserSubject, app_state
from enclava.auth.schemas import LoginRequest, TokenPair, UserRead
from enclava.db import DbSession

router = APIRouter(prefix="/auth", tags=["auth"])


@router.post("/login", response_model=TokenPair)
async def login(body: LoginRequest, request: Request, session: DbSession) -> TokenPair:
    settings = app_state(request).settings
    user = await service.authenticate(session, email=body.email, password=body.password)
    access, refresh = await service.issue_tokens(
        session,
        secret_key=settings.secret_key_value,
        user=user,
        access_ttl_s=settings.access_token_ttl_s,
        refresh_ttl_s=settings.refresh_token_ttl_s,
    )
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=settings.access_token_ttl_s
    )


@router.get("/me", response_model=UserRead)
async def me(subject: UserSubject) -> UserRead:
    return UserRead.model_validate(subject.user)
