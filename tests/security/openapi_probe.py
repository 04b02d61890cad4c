"""Drive the application from its own OpenAPI document: every operation, with a minimal valid
request built from its schema, so tests cover routes that land later without listing them."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

INTERNAL = "/api-internal/v1"
PUBLIC = "/api/v1"
METHODS = ("get", "post", "put", "patch", "delete")

# The resource kind an id in a path stands for, by the path segment in front of it.
SEGMENT_KINDS = {
    "collections": "collection",
    "documents": "document",
    "chatbots": "chatbot",
    "chatbot": "chatbot",
    "webhooks": "webhook",
    "workflows": "workflow",
    "executions": "execution",
    "api-keys": "api_key",
    "users": "user",
    "budgets": "budget",
    "conversations": "conversation",
    "deliveries": "delivery",
    "plugins": "plugin",
}
_STRING_CANDIDATES = ("probe", "probe-1", "a", "0", "abc123", "probe.example")


class Examples:
    """Minimal instances of the schemas of one OpenAPI document (required fields only)."""

    def __init__(self, openapi: dict[str, Any]) -> None:
        self.components = openapi.get("components", {}).get("schemas", {})

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            schema = self.components[schema["$ref"].rsplit("/", 1)[-1]]
        return schema

    def of(self, schema: dict[str, Any], depth: int = 0) -> Any:
        schema = self.resolve(schema)
        if depth > 12:
            return None
        if "default" in schema and schema["default"] is not None:
            return schema["default"]
        if "const" in schema:
            return schema["const"]
        if schema.get("enum"):
            return schema["enum"][0]
        for combinator in ("anyOf", "oneOf"):
            if combinator in schema:
                options = [self.resolve(o) for o in schema[combinator]]
                non_null = [o for o in options if o.get("type") != "null"]
                return self.of((non_null or options)[0], depth + 1)
        if "allOf" in schema:
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged.update(self.resolve(part))
            return self.of(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), None)
        if kind == "object" or "properties" in schema:
            properties = schema.get("properties", {})
            return {
                name: self.of(properties.get(name, {}), depth + 1)
                for name in schema.get("required", [])
            }
        if kind == "array":
            count = max(int(schema.get("minItems", 0)), 0)
            return [self.of(schema.get("items", {}), depth + 1) for _ in range(count)]
        if kind == "integer":
            return int(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
        if kind == "number":
            return float(schema.get("minimum", schema.get("exclusiveMinimum", 0) + 1))
        if kind == "boolean":
            return False
        if kind == "null":
            return None
        return self.string(schema)

    def string(self, schema: dict[str, Any]) -> Any:
        fmt = schema.get("format")
        if fmt == "binary" or "contentMediaType" in schema:
            return b"probe"
        if fmt == "uuid":
            return str(uuid.uuid4())
        if fmt == "email":
            return "probe@example.com"
        if fmt in ("uri", "url"):
            return "https://example.com/probe"
        if fmt == "date-time":
            return datetime.now(UTC).isoformat()
        if fmt == "date":
            return datetime.now(UTC).date().isoformat()
        low, high = int(schema.get("minLength", 1)), int(schema.get("maxLength", 64))
        pattern = schema.get("pattern")
        for candidate in _STRING_CANDIDATES:
            value = (candidate * (low // len(candidate) + 1))[: max(low, len(candidate))][:high]
            if not pattern or re.search(pattern, value):
                return value
        return "probe"


@dataclass
class Request:
    path_values: dict[str, str]
    query: dict[str, Any]
    body: Any
    media_type: str | None

    def kwargs(self) -> dict[str, Any]:
        """httpx keyword arguments for the query and body."""
        kwargs: dict[str, Any] = {}
        if self.query:
            kwargs["params"] = self.query
        if self.body is None or self.media_type is None:
            return kwargs
        if self.media_type.startswith("multipart/"):
            files, data = {}, {}
            for key, value in dict(self.body).items():
                if isinstance(value, bytes):
                    files[key] = ("probe.txt", value, "text/plain")
                else:
                    data[key] = str(value)
            kwargs["files"], kwargs["data"] = files, data
        elif self.media_type == "application/x-www-form-urlencoded":
            kwargs["data"] = self.body
        else:
            kwargs["json"] = self.body
        return kwargs


@dataclass
class Operation:
    method: str
    path: str
    spec: dict[str, Any]
    examples: Examples

    @property
    def path_params(self) -> list[dict[str, Any]]:
        return [p for p in self.spec.get("parameters", []) if p.get("in") == "path"]

    @property
    def is_public(self) -> bool:
        return self.path.startswith(PUBLIC + "/")

    @property
    def is_internal(self) -> bool:
        return self.path.startswith(INTERNAL + "/")

    def kind_of(self, param: str) -> str | None:
        segments = self.path.split("/")
        index = segments.index("{" + param + "}")
        return SEGMENT_KINDS.get(segments[index - 1]) if index > 0 else None

    def minimal_request(self) -> Request:
        """The simplest request the schema accepts, with random values for path ids."""
        path_values, query = {}, {}
        for param in self.spec.get("parameters", []):
            schema = param.get("schema", {})
            resolved = self.examples.resolve(schema)
            if param.get("in") == "path":
                if resolved.get("format") == "uuid" or self.kind_of(param["name"]):
                    path_values[param["name"]] = str(uuid.uuid4())
                    continue
                candidate = f"zz{uuid.uuid4().hex[:8]}"
                pattern = resolved.get("pattern")
                if pattern and not re.search(pattern, candidate):
                    candidate = str(self.examples.of(schema))
                path_values[param["name"]] = candidate
            elif param.get("in") == "query" and param.get("required"):
                query[param["name"]] = self.examples.of(schema)
        body, media_type = None, None
        content = self.spec.get("requestBody", {}).get("content", {})
        if content:
            media_type = next(iter(content))
            body = self.examples.of(content[media_type].get("schema", {}))
        return Request(path_values, query, body, media_type)

    def fill(self, values: dict[str, str]) -> str:
        path = self.path
        for name, value in values.items():
            path = path.replace("{" + name + "}", value)
        return path


def operations(openapi: dict[str, Any]) -> list[Operation]:
    examples = Examples(openapi)
    return [
        Operation(method.upper(), path, item[method], examples)
        for path, item in openapi["paths"].items()
        for method in METHODS
        if method in item
    ]


def multipart_operations(openapi: dict[str, Any]) -> list[Operation]:
    return [
        op
        for op in operations(openapi)
        if "multipart/form-data" in op.spec.get("requestBody", {}).get("content", {})
    ]
