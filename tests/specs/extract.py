"""Regenerate ``openai-schemas.json`` from the OpenAI OpenAPI spec (MIT, see the LICENSE file
beside this one): the response schemas Enclava must match, with everything they reference,
unchanged except that OpenAPI 3.0 ``nullable: true`` becomes a JSON-Schema ``null`` type so a
plain JSON-Schema validator reads it as the spec means it, and prose descriptions (which play
no part in validation) are left out.

    python tests/specs/extract.py ../shared/specs/openai-openapi.yaml
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOTS = [
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateEmbeddingResponse",
    "ListModelsResponse",
    "Model",
    "ErrorResponse",
    "CreateChatCompletionRequest",
    "CreateEmbeddingRequest",
]
PREFIX = "#/components/schemas/"


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(PREFIX):
            found.add(ref[len(PREFIX) :])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _nullable(node: Any) -> Any:
    if isinstance(node, dict):
        # A string "description" is prose; a property named "description" maps to a schema.
        node = {
            k: _nullable(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str))
        }
        if node.pop("nullable", False):
            kind = node.get("type")
            if isinstance(kind, str):
                node["type"] = [kind, "null"]
            elif isinstance(kind, list) and "null" not in kind:
                node["type"] = [*kind, "null"]
            if "enum" in node and None not in node["enum"]:
                node["enum"] = [*node["enum"], None]
        return node
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    return node


def main(source: str) -> None:
    raw = Path(source).read_bytes()
    spec = yaml.load(raw, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506
    schemas = spec["components"]["schemas"]
    wanted: set[str] = set()
    queue = list(ROOTS)
    while queue:
        name = queue.pop()
        if name in wanted:
            continue
        wanted.add(name)
        found: set[str] = set()
        _refs(schemas[name], found)
        queue.extend(found - wanted)
    out = {
        "source_sha256": hashlib.sha256(raw).hexdigest(),
        "openapi_version": spec["info"]["version"],
        "components": {"schemas": {n: _nullable(schemas[n]) for n in sorted(wanted)}},
    }
    target = Path(__file__).with_name("openai-schemas.json")
    target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"{len(wanted)} schemas -> {target}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/specs/openai-openapi.yaml")
