"""User administration (admins) and a user's own password.

Admins manage every account; a user sees only themselves (other ids are 404). The last active
administrator cannot be demoted, disabled or deleted, so an installation is never left without
one. Disabling a user, resetting their password or deleting them ends their sessions; their
requests are refused at once anyway: signed-in requests load the user, and the routers
invalidate the cached snapshots of the user's API keys after the commit
(``api_keys.lookup.invalidate_owner``).
"""

from __future__ import annotations

import uuid

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.api_keys import repository as api_keys_repository
from enclava.audit import service as audit
from enclava.auth import repository
from enclava.auth import service as auth_service
from enclava.auth.schemas import UserCreate
from enclava.auth.subject import AuthSubject
from enclava.errors import BadRequestError, ConflictError, NotFoundError
from enclava.kit.time import utcnow
from enclava.models import User
from enclava.users.schemas import PasswordChange, UserUpdate


async def list_users(
    session: AsyncSession, subject: AuthSubject, *, offset: int, limit: int
) -> list[User]:
    if not subject.sees_everything:
        user = await repository.get_user(session, subject.user_id)
        return [user] if user is not None and offset == 0 else []
    return await repository.list_users(session, offset=offset, limit=limit)


async def get_user(
    session: AsyncSession, subject: AuthSubject, user_id: uuid.UUID, *, for_update: bool = False
) -> User:
    user = None
    if subject.sees_everything or user_id == subject.user_id:
        user = await repository.get_user(session, user_id, for_update=for_update)
    if user is None:
        raise NotFoundError("User not found")
    return user


async def create_user(
    session: AsyncSession, subject: AuthSubject, body: UserCreate, *, request: Request | None
) -> User:
    user = await auth_service.create_user(
        session, email=body.email, password=body.password, role=body.role, full_name=body.full_name
    )
    audit.record(
        session,
        action="user.create",
        subject=subject,
        resource_type="user",
        resource_id=user.id,
        details={"email": user.email, "role": user.role},
        request=request,
    )
    return user


async def _ensure_an_admin_remains(session: AsyncSession, user: User) -> None:
    if (
        user.role == "admin"
        and user.is_active
        and await repository.count_active_admins(session) <= 1
    ):
        raise ConflictError(
            "This is the last active administrator; promote another user first",
            code="last_admin",
        )


async def update_user(
    session: AsyncSession,
    subject: AuthSubject,
    user_id: uuid.UUID,
    changes: UserUpdate,
    *,
    request: Request | None,
) -> User:
    user = await get_user(session, subject, user_id)
    fields = changes.model_dump(exclude_unset=True)
    if fields.get("role") is None:
        fields.pop("role", None)
    if fields.get("is_active") is None:
        fields.pop("is_active", None)
    if ("role" in fields and fields["role"] != "admin") or fields.get("is_active") is False:
        await _ensure_an_admin_remains(session, user)
    end_sessions = False
    if "password" in fields:
        password = fields.pop("password")
        if password is None:
            raise BadRequestError("password cannot be null", param="password")
        auth_service.check_password_strength(password)
        user.password_hash = await auth_service.hash_password(password)
        end_sessions = True
    if "full_name" in fields:
        user.full_name = fields["full_name"]
    if "role" in fields:
        user.role = fields["role"]
    if "is_active" in fields:
        user.is_active = fields["is_active"]
        end_sessions = end_sessions or not user.is_active
    if end_sessions:
        await repository.revoke_families(session, now=utcnow(), user_id=user.id)
    audit.record(
        session,
        action="user.update",
        subject=subject,
        resource_type="user",
        resource_id=user.id,
        details={
            "changed": sorted(changes.model_dump(exclude_unset=True)),
            **{k: v for k, v in fields.items() if k in ("role", "is_active")},
        },
        request=request,
    )
    await session.flush()
    return user


async def delete_user(
    session: AsyncSession, subject: AuthSubject, user_id: uuid.UUID, *, request: Request | None
) -> list[str]:
    """Delete a user and (by cascade) their keys, sessions, budgets and owned resources.

    Returns the hashes of the deleted keys, for the caller to invalidate after the commit.
    """
    user = await get_user(session, subject, user_id, for_update=True)
    await _ensure_an_admin_remains(session, user)
    # Read under the user's row lock: no key can be added for them until the commit.
    key_hashes = await api_keys_repository.owned_key_hashes(session, user.id)
    audit.record(
        session,
        action="user.delete",
        subject=subject,
        resource_type="user",
        resource_id=user.id,
        details={"email": user.email},
        request=request,
    )
    await repository.delete_user(session, user.id)
    session.expunge(user)
    return key_hashes


async def change_own_password(
    session: AsyncSession, subject: AuthSubject, body: PasswordChange, *, request: Request | None
) -> None:
    """Change your password; your other sessions end, this one goes on."""
    user = await repository.get_user(session, subject.user_id)
    if user is None:
        raise NotFoundError("User not found")
    if not await auth_service.verify_password(user.password_hash, body.current_password):
        raise BadRequestError(
            "Current password is incorrect",
            code="invalid_current_password",
            param="current_password",
        )
    auth_service.check_password_strength(body.new_password)
    user.password_hash = await auth_service.hash_password(body.new_password)
    await repository.revoke_families(
        session, now=utcnow(), user_id=user.id, except_family=subject.session_id
    )
    audit.record(
        session,
        action="user.password_change",
        subject=subject,
        resource_type="user",
        resource_id=user.id,
        request=request,
    )
