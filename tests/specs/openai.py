"""Validate bodies against the OpenAI API schemas (extracted by ``extract.py``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

_DOCUMENT = Path(__file__).with_name("openai-schemas.json")


@cache
def _validator(name: str) -> Draft202012Validator:
    document = json.loads(_DOCUMENT.read_text())
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return Draft202012Validator(schema)


def assert_valid(name: str, body: Any) -> None:
    """Fail with every schema violation of ``body`` against the OpenAI schema ``name``."""
    errors = sorted(_validator(name).iter_errors(body), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])
