"""Make the OpenAPI document tell the truth about error responses.

FastAPI documents a 422 ``HTTPValidationError`` whose ``detail`` is a list; Enclava answers
malformed internal requests with ``{detail, code, errors}`` and malformed ``/api/v1`` requests
with a 400 in the OpenAI error shape (``errors.py``). Every other error of the two APIs has one
of the two shapes too, so each API operation gets a ``default`` response with its shape. Clients
generated from the document, and the schema-conformance tests, then see what is really sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from enclava.security.asgi import INTERNAL_API_PREFIX, PUBLIC_API_PREFIX, under

_NULLABLE_STRING = {"anyOf": [{"type": "string"}, {"type": "null"}]}
SCHEMAS: dict[str, dict[str, Any]] = {
    "ErrorResponse": {
        "title": "ErrorResponse",
        "type": "object",
        "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
        "required": ["detail", "code"],
    },
    "ValidationErrorResponse": {
        "title": "ValidationErrorResponse",
        "type": "object",
        "properties": {
            "detail": {"type": "string"},
            "code": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "loc": {"type": "array", "items": {"type": "string"}},
                        "msg": {"type": "string"},
                        "type": {"type": "string"},
                    },
                    "required": ["loc", "msg", "type"],
                },
            },
        },
        "required": ["detail", "code", "errors"],
    },
    "OpenAIErrorResponse": {
        "title": "OpenAIErrorResponse",
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _NULLABLE_STRING,
                    "code": _NULLABLE_STRING,
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    },
}
_HTTP_METHODS = frozenset({"get", "put", "post", "delete", "patch", "options", "head", "trace"})


def _response(description: str, schema_name: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{schema_name}"}}
        },
    }


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the error responses of ``schema`` (in place) to the shapes Enclava sends."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(SCHEMAS)
    for path, item in schema.get("paths", {}).items():
        public = under(path, PUBLIC_API_PREFIX)
        internal = under(path, INTERNAL_API_PREFIX)
        for method, operation in item.items():
            if method not in _HTTP_METHODS:
                continue
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                del responses["422"]
                if public:
                    responses.setdefault("400", _response("Invalid request", "OpenAIErrorResponse"))
                else:
                    responses["422"] = _response("Validation error", "ValidationErrorResponse")
            if public:
                responses.setdefault("default", _response("Error", "OpenAIErrorResponse"))
            elif internal:
                responses.setdefault("default", _response("Error", "ErrorResponse"))
    if "HTTPValidationError" in components and '"#/components/schemas/HTTPValidationError"' not in (
        repr(schema.get("paths", {})).replace("'", '"')
    ):
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
    return schema


def install_openapi_error_schemas(app: FastAPI) -> None:
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
