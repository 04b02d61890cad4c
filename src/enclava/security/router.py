"""Runtime secrets for administrators: set, list (names only) and delete."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from enclava.auth.dependencies import AdminSubject
from enclava.db import DbSession
from enclava.security import service
from enclava.security.schemas import SECRET_NAME_PATTERN, AppSecretRead, AppSecretWrite

router = APIRouter(prefix="/settings/secrets", tags=["settings"])

SecretName = Annotated[str, Path(pattern=SECRET_NAME_PATTERN, max_length=100)]


@router.get("", response_model=list[AppSecretRead])
async def list_secrets(admin: AdminSubject, session: DbSession) -> list[AppSecretRead]:
    secrets = await service.list_secrets(session, admin)
    return [AppSecretRead.model_validate(s) for s in secrets]


@router.put("/{name}", response_model=AppSecretRead)
async def set_secret(
    name: SecretName, body: AppSecretWrite, admin: AdminSubject, session: DbSession
) -> AppSecretRead:
    secret = await service.set_secret(session, admin, name=name, value=body.secret)
    return AppSecretRead.model_validate(secret)


@router.delete("/{name}", status_code=204)
async def delete_secret(name: SecretName, admin: AdminSubject, session: DbSession) -> Response:
    await service.delete_secret(session, admin, name=name)
    return Response(status_code=204)
