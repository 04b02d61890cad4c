"""One error hierarchy and the handlers that render it.

Services raise ``AppError`` subclasses, never ``HTTPException``. Under ``/api/v1`` errors take the
OpenAI shape ``{"error": {"message", "type", "param", "code"}}`` so OpenAI SDKs raise the matching
exception; elsewhere they are ``{"detail", "code"}``. Clients never see a stack trace.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from enclava.kit.logging import request_id_var

PUBLIC_API_PREFIX = "/api/v1"


class AppError(Exception):
    status_code = 400
    code = "bad_request"
    openai_type = "invalid_request_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.headers = headers or {}


class BadRequestError(AppError):
    pass


class AuthenticationError(AppError):
    status_code = 401
    code = "invalid_authentication"
    openai_type = "authentication_error"

    def __init__(self, message: str = "Authentication required", **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(message, **kwargs)


class PermissionDeniedError(AppError):
    status_code = 403
    code = "permission_denied"
    openai_type = "permission_error"


class NotFoundError(AppError):
    status_code = 404
    code = "not_found"
    openai_type = "invalid_request_error"


class ConflictError(AppError):
    status_code = 409
    code = "conflict"


class PayloadTooLargeError(AppError):
    status_code = 413
    code = "payload_too_large"


class RateLimitError(AppError):
    status_code = 429
    code = "rate_limit_exceeded"
    openai_type = "rate_limit_error"


class QuotaExceededError(AppError):
    status_code = 429
    code = "insufficient_quota"
    openai_type = "insufficient_quota"


class UpstreamError(AppError):
    status_code = 502
    code = "upstream_error"
    openai_type = "api_error"


class ServiceUnavailableError(AppError):
    status_code = 503
    code = "service_unavailable"
    openai_type = "api_error"


def _is_public_api(request: Request) -> bool:
    return request.url.path.startswith(PUBLIC_API_PREFIX)


def error_response(
    request: Request,
    status_code: int,
    message: str,
    *,
    code: str,
    openai_type: str = "invalid_request_error",
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any]
    if _is_public_api(request):
        body = {"error": {"message": message, "type": openai_type, "param": param, "code": code}}
    else:
        body = {"detail": message, "code": code}
    request_id = request_id_var.get()
    if request_id:
        headers = {**(headers or {}), "X-Request-ID": request_id}
    return JSONResponse(body, status_code=status_code, headers=headers)


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return error_response(
        request,
        exc.status_code,
        exc.message,
        code=exc.code,
        openai_type=exc.openai_type,
        param=exc.param,
        headers=exc.headers,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    param = ".".join(location) or None
    message = first.get("msg", "Invalid request")
    if first.get("type") == "json_invalid":
        message = "Request body is not valid JSON"
    elif param:
        message = f"{param}: {message}"
    if _is_public_api(request):
        # OpenAI answers malformed requests with 400 invalid_request_error.
        return error_response(request, 400, message, code="invalid_request", param=param)
    body = {
        "detail": message,
        "code": "validation_error",
        "errors": [
            {"loc": list(map(str, e.get("loc", ()))), "msg": e.get("msg"), "type": e.get("type")}
            for e in errors[:20]
        ],
    }
    return JSONResponse(body, status_code=422)


_HTTP_CODES = {
    400: "bad_request",
    401: "invalid_authentication",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    429: "rate_limit_exceeded",
}


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else "Request failed"
    openai_type = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
    return error_response(
        request,
        exc.status_code,
        message,
        code=_HTTP_CODES.get(exc.status_code, "error"),
        openai_type=openai_type,
        headers=dict(exc.headers or {}),
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
