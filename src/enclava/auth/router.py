"""Sign-in for the internal API: tokens, refresh, sign-out and the user's own profile.

Sign-in and refresh run in their own transaction, committed even when they are refused: a
failed sign-in's audit row and a detected token reuse's session revocation must stick although
the request fails (the request-scoped session would roll them back with the error).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.auth import service
from enclava.auth.dependencies import UserSubject, app_state
from enclava.auth.schemas import LoginRequest, LogoutRequest, RefreshRequest, TokenPair, UserRead
from enclava.db import DbSession
from enclava.errors import AppError

router = APIRouter(prefix="/auth", tags=["auth"])

T = TypeVar("T")


async def _commit_even_if_refused(
    request: Request, work: Callable[[AsyncSession], Awaitable[T]]
) -> T:
    """Run ``work`` in one transaction that is committed also when it raises an ``AppError``.

    Only for work whose writes before a refusal are bookkeeping of that refusal.
    """
    async with app_state(request).session_factory() as session:
        try:
            result = await work(session)
        except AppError:
            await session.commit()
            raise
        except BaseException:
            await session.rollback()
            raise
        await session.commit()
        return result


@router.post("/login", response_model=TokenPair)
async def login(body: LoginRequest, request: Request) -> TokenPair:
    settings = app_state(request).settings

    async def work(session: AsyncSession) -> tuple[str, str]:
        user = await service.authenticate(
            session, email=body.email, password=body.password, request=request
        )
        return await service.issue_tokens(
            session,
            secret_key=settings.secret_key_value,
            user=user,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
        )

    access, refresh = await _commit_even_if_refused(request, work)
    return TokenPair(
        access_token=access, refresh_token=refresh, expires_in=settings.access_token_ttl_s
    )


@router.post("/refresh", response_model=TokenPair)
async def refresh(body: RefreshRequest, request: Request) -> TokenPair:
    settings = app_state(request).settings

    async def work(session: AsyncSession) -> tuple[str, str]:
        return await service.refresh(
            session,
            secret_key=settings.secret_key_value,
            refresh_token=body.refresh_token,
            access_ttl_s=settings.access_token_ttl_s,
            refresh_ttl_s=settings.refresh_token_ttl_s,
            request=request,
        )

    access, refresh_token = await _commit_even_if_refused(request, work)
    return TokenPair(
        access_token=access, refresh_token=refresh_token, expires_in=settings.access_token_ttl_s
    )


@router.post("/logout", status_code=204)
async def logout(
    subject: UserSubject,
    session: DbSession,
    request: Request,
    body: LogoutRequest | None = None,
) -> Response:
    await service.logout(
        session,
        subject,
        secret_key=app_state(request).settings.secret_key_value,
        refresh_token=body.refresh_token if body else None,
        all_sessions=body.all_sessions if body else False,
        request=request,
    )
    return Response(status_code=204)


@router.get("/me", response_model=UserRead)
async def me(subject: UserSubject) -> UserRead:
    return UserRead.model_validate(subject.user)
