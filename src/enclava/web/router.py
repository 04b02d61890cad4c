"""The dashboard: server-rendered pages on the internal services.

Forms carry a CSRF token that must match the ``enclava_csrf`` cookie (double submit), and
``enclava.security.csrf`` also checks the Origin of every state-changing request; the session is
an HttpOnly, SameSite=Lax cookie holding a short-lived access token.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from enclava.auth import repository, service
from enclava.auth.dependencies import app_state
from enclava.auth.tokens import create_access_token, decode_access_token
from enclava.db import DbSession
from enclava.errors import AppError
from enclava.kit.crypto import constant_time_equals, random_token
from enclava.models import User
from enclava.security.csrf import CSRF_COOKIE, SESSION_COOKIE

_HERE = Path(__file__).parent
templates = Jinja2Templates(directory=str(_HERE / "templates"))
static_files = StaticFiles(directory=str(_HERE / "static"))


router = APIRouter(include_in_schema=False)


def _csrf_token(request: Request) -> str:
    return request.cookies.get(CSRF_COOKIE) or random_token(24)


def _csrf_ok(request: Request, submitted: str) -> bool:
    # enclava.security.csrf.CsrfMiddleware checks every state-changing dashboard request before
    # it gets here (origin and token); this repeats the token check so a form can answer with
    # its own friendly page. Scripts may send the token in the X-CSRF-Token header instead.
    cookie = request.cookies.get(CSRF_COOKIE)
    submitted = submitted or request.headers.get("x-csrf-token", "")
    return bool(cookie and submitted and constant_time_equals(cookie, submitted))


def _render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    token = _csrf_token(request)
    response = templates.TemplateResponse(
        request, name, {"csrf_token": token, **context}, status_code=status_code
    )
    response.set_cookie(
        CSRF_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


async def current_dashboard_user(request: Request, session: DbSession) -> User | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        user_id = decode_access_token(app_state(request).settings.secret_key_value, token)
    except AppError:
        return None
    user = await repository.get_user(session, user_id)
    return user if user is not None and user.is_active else None


def _signed_in(request: Request, user: User) -> Response:
    settings = app_state(request).settings
    token = create_access_token(settings.secret_key_value, user.id, settings.access_token_ttl_s)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=settings.access_token_ttl_s,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/", response_class=HTMLResponse)
async def index(request: Request, session: DbSession) -> Response:
    if await repository.count_users(session) == 0:
        return _render(request, "setup.html")
    user = await current_dashboard_user(request, session)
    if user is None:
        return _render(request, "login.html")
    return _render(request, "home.html", user=user)


@router.post("/setup", response_class=HTMLResponse)
async def setup(
    request: Request,
    session: DbSession,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    password_confirm: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    if not _csrf_ok(request, csrf_token):
        return _render(request, "setup.html", 403, error="Form expired; please try again.")
    # The form only exists while there are no users; afterwards this is a plain sign-in page.
    if await repository.count_users(session) > 0:
        return _render(request, "login.html", 409, notice="Enclava is already set up. Sign in.")
    if password != password_confirm:
        return _render(request, "setup.html", 400, error="Passwords do not match.", email=email)
    try:
        user = await service.create_user(session, email=email, password=password, role="admin")
    except AppError as exc:
        return _render(request, "setup.html", exc.status_code, error=exc.message, email=email)
    return _signed_in(request, user)


@router.post("/login", response_class=HTMLResponse)
async def login(
    request: Request,
    session: DbSession,
    email: Annotated[str, Form(max_length=320)],
    password: Annotated[str, Form(max_length=1024)],
    csrf_token: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    if not _csrf_ok(request, csrf_token):
        return _render(request, "login.html", 403, error="Form expired; please try again.")
    try:
        user = await service.authenticate(session, email=email, password=password)
    except AppError as exc:
        return _render(request, "login.html", exc.status_code, error=exc.message, email=email)
    return _signed_in(request, user)


@router.post("/logout")
async def logout(
    request: Request, csrf_token: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    response = RedirectResponse("/", status_code=303)
    if _csrf_ok(request, csrf_token):
        response.delete_cookie(SESSION_COOKIE)
    return response
