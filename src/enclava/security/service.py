"""Runtime secrets (provider keys and the like set from the dashboard), encrypted at rest.

Other domains read them with ``get_secret_value``; the API only ever lists their names.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit.service import record
from enclava.auth.subject import AuthSubject
from enclava.errors import NotFoundError
from enclava.models import AppSecret
from enclava.security import repository


async def get_secret_value(session: AsyncSession, name: str) -> str | None:
    """The decrypted value of secret ``name``, or ``None`` when it is not set."""
    secret = await repository.get(session, name)
    return secret.value if secret is not None else None


async def list_secrets(session: AsyncSession, subject: AuthSubject) -> list[AppSecret]:
    return await repository.list_all(session)


async def set_secret(
    session: AsyncSession, subject: AuthSubject, *, name: str, value: str
) -> AppSecret:
    """Create or replace secret ``name`` (administrators only, enforced by the endpoint)."""
    secret = await repository.get(session, name)
    created = secret is None
    if secret is None:
        secret = AppSecret(name=name, value=value, updated_by=subject.user_id)
        repository.add(session, secret)
    else:
        secret.value = value
        secret.updated_by = subject.user_id
    await session.flush()
    record(
        session,
        action="settings.secret_created" if created else "settings.secret_updated",
        subject=subject,
        resource_type="app_secret",
        resource_id=name,
    )
    return secret


async def delete_secret(session: AsyncSession, subject: AuthSubject, *, name: str) -> None:
    secret = await repository.get(session, name)
    if secret is None:
        raise NotFoundError(f"No secret named {name!r}")
    await repository.delete(session, secret)
    record(
        session,
        action="settings.secret_deleted",
        subject=subject,
        resource_type="app_secret",
        resource_id=name,
    )
