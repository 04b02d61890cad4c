"""Prompt templates: the ``{{variable}}`` language and the built-in library (pure functions).

A placeholder is ``{{ name }}`` (letters, digits, underscore; spaces inside the braces allowed).
Single braces are plain text, so prompts may contain JSON. Every placeholder is a declared
variable; a variable may carry a default. Rendering refuses values for variables the template does
not have and variables left without a value, so a typo never silently produces a broken prompt.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclava.errors import BadRequestError

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_VARIABLE_VALUE_CHARS = 10_000

CHATBOT_TYPES = (
    "assistant",
    "customer_support",
    "teacher",
    "researcher",
    "creative_writer",
    "custom",
)


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    description: str | None = None
    default: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "default": self.default}


def placeholders(text: str) -> list[str]:
    """Variable names used in ``text``, in order of first use."""
    seen: dict[str, None] = {}
    for match in PLACEHOLDER.finditer(text):
        seen.setdefault(match.group(1), None)
    return list(seen)


def declare_variables(text: str, declared: Sequence[Variable]) -> list[Variable]:
    """Check declarations against the text; undeclared placeholders become required variables.

    A declaration the text never uses is refused (it is almost always a typo).
    """
    by_name: dict[str, Variable] = {}
    for variable in declared:
        if not VARIABLE_NAME.match(variable.name):
            raise BadRequestError(
                f"Invalid variable name {variable.name!r}: use letters, digits and underscores",
                code="invalid_template",
                param="variables",
            )
        if variable.name in by_name:
            raise BadRequestError(
                f"Variable {variable.name!r} is declared twice",
                code="invalid_template",
                param="variables",
            )
        by_name[variable.name] = variable
    used = placeholders(text)
    unused = sorted(set(by_name) - set(used))
    if unused:
        raise BadRequestError(
            f"Declared variables not used in the template: {', '.join(unused)}",
            code="invalid_template",
            param="variables",
        )
    return [by_name.get(name, Variable(name)) for name in used]


def check_values(variables: Sequence[Variable], values: Mapping[str, Any]) -> dict[str, str]:
    """The complete value map for rendering, or a 400 naming unknown and missing variables."""
    known = {v.name: v for v in variables}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise BadRequestError(
            f"Unknown template variables: {', '.join(unknown)}",
            code="unknown_template_variables",
            param="template_variables",
        )
    resolved: dict[str, str] = {}
    missing: list[str] = []
    for variable in variables:
        value = values.get(variable.name, variable.default)
        if value is None:
            missing.append(variable.name)
            continue
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise BadRequestError(
                f"Template variable {variable.name!r} must be a string",
                code="invalid_template_variables",
                param="template_variables",
            )
        text = str(value)
        if len(text) > MAX_VARIABLE_VALUE_CHARS:
            raise BadRequestError(
                f"Template variable {variable.name!r} is longer than "
                f"{MAX_VARIABLE_VALUE_CHARS} characters",
                code="invalid_template_variables",
                param="template_variables",
            )
        resolved[variable.name] = text
    if missing:
        raise BadRequestError(
            f"Missing values for template variables: {', '.join(missing)}",
            code="missing_template_variables",
            param="template_variables",
        )
    return resolved


def render(text: str, variables: Sequence[Variable], values: Mapping[str, Any]) -> str:
    """Substitute the variables into ``text`` (values are inserted verbatim, never re-parsed)."""
    resolved = check_values(variables, values)
    return PLACEHOLDER.sub(lambda m: resolved[m.group(1)], text)


def variables_from_rows(rows: Sequence[Mapping[str, Any]]) -> list[Variable]:
    return [
        Variable(name=r["name"], description=r.get("description"), default=r.get("default"))
        for r in rows
    ]


@dataclass(frozen=True, slots=True)
class BuiltinTemplate:
    key: str
    name: str
    description: str
    template: str
    variables: tuple[Variable, ...]


BUILTIN_TEMPLATES: tuple[BuiltinTemplate, ...] = (
    BuiltinTemplate(
        key="assistant",
        name="Helpful assistant",
        description="A general assistant that answers clearly and admits uncertainty.",
        template=(
            "You are {{assistant_name}}, a helpful and precise assistant. Answer clearly and "
            "concisely, use lists or steps when they help, and say so plainly when you are not "
            "sure instead of guessing."
        ),
        variables=(Variable("assistant_name", "How the assistant refers to itself", "Assistant"),),
    ),
    BuiltinTemplate(
        key="customer_support",
        name="Customer support agent",
        description="A courteous support agent for one company's customers.",
        template=(
            "You are a customer support agent for {{company_name}}. Be friendly, patient and "
            "brief. Solve the customer's problem step by step, ask for missing details when you "
            "need them, and never invent policies, prices or promises. If you cannot help, "
            "explain how to reach a human at {{support_contact}}."
        ),
        variables=(
            Variable("company_name", "The company the agent represents", "our company"),
            Variable("support_contact", "Where customers reach a human", "our support team"),
        ),
    ),
    BuiltinTemplate(
        key="teacher",
        name="Patient teacher",
        description="Explains a subject at the learner's level and checks understanding.",
        template=(
            "You are a patient teacher of {{subject}} for {{audience}}. Explain ideas step by "
            "step with simple examples, check understanding with short questions, and encourage "
            "the learner to reason instead of only giving answers."
        ),
        variables=(
            Variable("subject", "What is taught", "any subject"),
            Variable("audience", "Who is learning", "curious learners"),
        ),
    ),
    BuiltinTemplate(
        key="researcher",
        name="Research analyst",
        description="Careful, evidence-first analysis that separates facts from assumptions.",
        template=(
            "You are a meticulous research analyst in {{field}}. Base answers on evidence, "
            "distinguish established facts from assumptions, note limitations and open "
            "questions, and cite the sources you were given when you use them."
        ),
        variables=(Variable("field", "The research field", "any field"),),
    ),
    BuiltinTemplate(
        key="creative_writer",
        name="Creative writer",
        description="Imaginative writing in a chosen style.",
        template=(
            "You are a creative writer. Write vivid, original text in a {{style}} style, keep "
            "the user's constraints (length, tone, audience), and offer alternatives when asked."
        ),
        variables=(Variable("style", "The preferred writing style", "engaging"),),
    ),
)

BUILTIN_BY_KEY = {t.key: t for t in BUILTIN_TEMPLATES}
