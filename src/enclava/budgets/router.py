"""Budgets on the internal API: users see their own and their keys' budgets, admins all."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Response

from enclava.auth.dependencies import UserSubject
from enclava.budgets import repository, service
from enclava.budgets.schemas import BudgetCreate, BudgetRead, BudgetUpdate
from enclava.db import DbSession
from enclava.kit.pagination import Offset

router = APIRouter(prefix="/budgets", tags=["budgets"])


@router.get("", response_model=list[BudgetRead])
async def list_budgets(
    subject: UserSubject,
    session: DbSession,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    offset: Offset = 0,
    limit: int = Query(100, ge=1, le=500),
) -> list[BudgetRead]:
    budgets = await repository.list_budgets(
        session, subject, user_id=user_id, api_key_id=api_key_id, offset=offset, limit=limit
    )
    return [BudgetRead.model_validate(service.to_read(b)) for b in budgets]


@router.post("", response_model=BudgetRead, status_code=201)
async def create_budget(body: BudgetCreate, subject: UserSubject, session: DbSession) -> BudgetRead:
    budget = await service.add_budget(session, subject, **body.model_dump())
    return BudgetRead.model_validate(service.to_read(budget))


@router.get("/{budget_id}", response_model=BudgetRead)
async def get_budget(budget_id: uuid.UUID, subject: UserSubject, session: DbSession) -> BudgetRead:
    budget = await service.get_budget(session, subject, budget_id)
    return BudgetRead.model_validate(service.to_read(budget))


@router.patch("/{budget_id}", response_model=BudgetRead)
async def update_budget(
    budget_id: uuid.UUID, body: BudgetUpdate, subject: UserSubject, session: DbSession
) -> BudgetRead:
    budget = await service.update_budget(
        session, subject, budget_id, body.model_dump(exclude_unset=True)
    )
    return BudgetRead.model_validate(service.to_read(budget))


@router.delete("/{budget_id}", status_code=204)
async def delete_budget(budget_id: uuid.UUID, subject: UserSubject, session: DbSession) -> Response:
    await service.delete_budget(session, subject, budget_id)
    return Response(status_code=204)
