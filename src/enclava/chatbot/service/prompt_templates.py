"""The prompt-template library: built-ins seeded on first use, users' own templates."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from enclava.audit import service as audit
from enclava.auth.subject import AuthSubject
from enclava.chatbot import repository
from enclava.chatbot.schemas import PromptTemplateCreate, PromptTemplateUpdate, TemplateVariable
from enclava.chatbot.templates import (
    BUILTIN_TEMPLATES,
    Variable,
    check_values,
    declare_variables,
    placeholders,
    render,
    variables_from_rows,
)
from enclava.errors import BadRequestError, ConflictError, NotFoundError, PermissionDeniedError
from enclava.kit.time import utcnow
from enclava.models import PromptTemplate

logger = logging.getLogger(__name__)


async def ensure_builtin_templates(session: AsyncSession) -> None:
    """Insert the built-in templates that are missing (admins' edits to existing ones stay)."""
    existing = await repository.builtin_keys(session)
    for builtin in BUILTIN_TEMPLATES:
        if builtin.key in existing:
            continue
        try:
            async with session.begin_nested():
                session.add(
                    PromptTemplate(
                        builtin_key=builtin.key,
                        name=builtin.name,
                        description=builtin.description,
                        template=builtin.template,
                        variables=[v.as_dict() for v in builtin.variables],
                    )
                )
                await session.flush()
        except IntegrityError:
            # Another request seeded it at the same moment; its row is as good as ours.
            logger.debug("built-in template seeded concurrently", extra={"key": builtin.key})


async def list_templates(session: AsyncSession, subject: AuthSubject) -> list[PromptTemplate]:
    await ensure_builtin_templates(session)
    return await repository.list_visible_templates(session, user_id=subject.user_id)


async def get_template(
    session: AsyncSession, subject: AuthSubject, template_id: uuid.UUID
) -> PromptTemplate:
    template = await repository.get_visible_template(session, template_id, user_id=subject.user_id)
    if template is None:
        raise NotFoundError("Prompt template not found", code="template_not_found")
    return template


def _declared(text: str, variables: Sequence[TemplateVariable]) -> list[dict[str, Any]]:
    declared = [Variable(v.name, v.description, v.default) for v in variables]
    return [v.as_dict() for v in declare_variables(text, declared)]


async def create_template(
    session: AsyncSession,
    subject: AuthSubject,
    data: PromptTemplateCreate,
    *,
    request: Request | None = None,
) -> PromptTemplate:
    template = PromptTemplate(
        user_id=subject.user_id,
        name=data.name,
        description=data.description,
        template=data.template,
        variables=_declared(data.template, data.variables),
    )
    session.add(template)
    await session.flush()
    audit.record(
        session,
        action="prompt_template.create",
        subject=subject,
        resource_type="prompt_template",
        resource_id=template.id,
        request=request,
    )
    return template


def _check_may_edit(subject: AuthSubject, template: PromptTemplate) -> None:
    if template.user_id is None and not subject.is_admin:
        raise PermissionDeniedError(
            "Built-in templates can only be edited by administrators; create your own instead",
            code="builtin_template",
        )


async def update_template(
    session: AsyncSession,
    subject: AuthSubject,
    template_id: uuid.UUID,
    data: PromptTemplateUpdate,
    *,
    request: Request | None = None,
) -> PromptTemplate:
    template = await get_template(session, subject, template_id)
    _check_may_edit(subject, template)
    changes = data.model_fields_set
    text = data.template if data.template is not None else template.template
    if data.variables is not None:
        variables = _declared(text, data.variables)
    else:
        # Keep what is known about variables that are still used; new placeholders get declared.
        used = set(placeholders(text))
        kept = [TemplateVariable(**row) for row in template.variables if row["name"] in used]
        variables = _declared(text, kept)
    # Chatbots render this template at every turn: refuse an edit that would break one of them.
    parsed = variables_from_rows(variables)
    for chatbot in await repository.chatbots_using_template(session, template.id):
        try:
            check_values(parsed, chatbot.template_variables)
        except BadRequestError as exc:
            raise ConflictError(
                f"This change would break chatbots that use the template ({exc.message})",
                code="template_in_use",
            ) from exc
    template.template = text
    template.variables = variables
    if "name" in changes and data.name is not None:
        template.name = data.name
    if "description" in changes:
        template.description = data.description
    template.updated_at = utcnow()
    await session.flush()
    audit.record(
        session,
        action="prompt_template.update",
        subject=subject,
        resource_type="prompt_template",
        resource_id=template.id,
        details={"fields": sorted(changes)},
        request=request,
    )
    return template


async def delete_template(
    session: AsyncSession,
    subject: AuthSubject,
    template_id: uuid.UUID,
    *,
    request: Request | None = None,
) -> None:
    template = await get_template(session, subject, template_id)
    if template.user_id is None:
        raise PermissionDeniedError("Built-in templates cannot be deleted", code="builtin_template")
    in_use = await repository.count_chatbots_using_template(session, template.id)
    if in_use:
        raise ConflictError(
            f"The template is used by {in_use} chatbot(s); point them elsewhere first",
            code="template_in_use",
        )
    await session.delete(template)
    audit.record(
        session,
        action="prompt_template.delete",
        subject=subject,
        resource_type="prompt_template",
        resource_id=template_id,
        request=request,
    )


async def render_template(
    session: AsyncSession, subject: AuthSubject, template_id: uuid.UUID, values: dict[str, str]
) -> str:
    template = await get_template(session, subject, template_id)
    return render(template.template, variables_from_rows(template.variables), values)
