"""Budgets on the internal API: users see their own and their keys' budgets, admins all.

Changes commit before the owner's budgets are invalidated in the ledger, so no instance can
load the old definitions again after the invalidation: hence their own transaction instead of
``DbSession`` (as for API key revocation)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query, Request, Response

from enclava.auth.dependencies import UserSubject, app_state
from enclava.budgets import repository, service
from enclava.budgets.schemas import BudgetCreate, BudgetRead, BudgetUpdate
from enclava.db import DbSession, transaction
from enclava.kit.pagination import Offset

router = APIRouter(prefix="/budgets", tags=["budgets"])


@router.get("", response_model=list[BudgetRead])
async def list_budgets(
    subject: UserSubject,
    session: DbSession,
    request: Request,
    user_id: uuid.UUID | None = None,
    api_key_id: uuid.UUID | None = None,
    offset: Offset = 0,
    limit: int = Query(100, ge=1, le=500),
) -> list[BudgetRead]:
    await service.flush_settlements(app_state(request))
    budgets = await repository.list_budgets(
        session, subject, user_id=user_id, api_key_id=api_key_id, offset=offset, limit=limit
    )
    shown = await service.read_budgets(app_state(request), budgets)
    return [BudgetRead.model_validate(b) for b in shown]


@router.post("", response_model=BudgetRead, status_code=201)
async def create_budget(body: BudgetCreate, subject: UserSubject, request: Request) -> BudgetRead:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        budget = await service.add_budget(session, subject, **body.model_dump())
    await service.invalidate_owner(state, user_id=budget.user_id, api_key_id=budget.api_key_id)
    [shown] = await service.read_budgets(state, [budget], created=True)
    return BudgetRead.model_validate(shown)


@router.get("/{budget_id}", response_model=BudgetRead)
async def get_budget(
    budget_id: uuid.UUID, subject: UserSubject, session: DbSession, request: Request
) -> BudgetRead:
    await service.flush_settlements(app_state(request))
    budget = await service.get_budget(session, subject, budget_id)
    [shown] = await service.read_budgets(app_state(request), [budget])
    return BudgetRead.model_validate(shown)


@router.patch("/{budget_id}", response_model=BudgetRead)
async def update_budget(
    budget_id: uuid.UUID, body: BudgetUpdate, subject: UserSubject, request: Request
) -> BudgetRead:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        budget = await service.update_budget(
            session, subject, budget_id, body.model_dump(exclude_unset=True)
        )
    await service.invalidate_owner(state, user_id=budget.user_id, api_key_id=budget.api_key_id)
    [shown] = await service.read_budgets(state, [budget])
    return BudgetRead.model_validate(shown)


@router.delete("/{budget_id}", status_code=204)
async def delete_budget(budget_id: uuid.UUID, subject: UserSubject, request: Request) -> Response:
    state = app_state(request)
    async with transaction(state.session_factory) as session:
        budget = await service.delete_budget(session, subject, budget_id)
    await service.invalidate_owner(state, user_id=budget.user_id, api_key_id=budget.api_key_id)
    return Response(status_code=204)
