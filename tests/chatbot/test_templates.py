from __future__ import annotations

import pytest

from enclava.chatbot.templates import (
    BUILTIN_TEMPLATES,
    CHATBOT_TYPES,
    Variable,
    declare_variables,
    placeholders,
    render,
)
from enclava.errors import BadRequestError


def test_placeholders_in_order_of_first_use_and_single_braces_are_text() -> None:
    text = 'Hi {{ name }}, reply as JSON {"a": 1} about {{topic}} for {{name}}.'
    assert placeholders(text) == ["name", "topic"]


def test_render_substitutes_values_and_defaults() -> None:
    variables = [Variable("name"), Variable("topic", default="cats")]
    text = "Hi {{ name }}, {{topic}}! {json}"
    assert render(text, variables, {"name": "Ada"}) == "Hi Ada, cats! {json}"
    assert render(text, variables, {"name": "Ada", "topic": "dogs"}) == "Hi Ada, dogs! {json}"


def test_values_are_inserted_verbatim_not_reparsed() -> None:
    variables = [Variable("a"), Variable("b", default="B")]
    assert render("{{a}} {{b}}", variables, {"a": "{{b}}"}) == "{{b}} B"


def test_unknown_and_missing_variables_are_refused() -> None:
    variables = [Variable("name")]
    with pytest.raises(BadRequestError) as unknown:
        render("{{name}}", variables, {"name": "x", "nmae": "y"})
    assert unknown.value.code == "unknown_template_variables"
    assert "nmae" in unknown.value.message
    with pytest.raises(BadRequestError) as missing:
        render("{{name}}", variables, {})
    assert missing.value.code == "missing_template_variables"
    assert "name" in missing.value.message


def test_declarations_must_match_the_text() -> None:
    declared = declare_variables("{{a}} {{b}}", [Variable("b", "B var", "x")])
    assert declared == [Variable("a"), Variable("b", "B var", "x")]
    with pytest.raises(BadRequestError, match="not used"):
        declare_variables("{{a}}", [Variable("c")])
    with pytest.raises(BadRequestError, match="Invalid variable name"):
        declare_variables("{{a}}", [Variable("a b")])
    with pytest.raises(BadRequestError, match="twice"):
        declare_variables("{{a}}", [Variable("a"), Variable("a")])


def test_every_builtin_renders_with_its_defaults() -> None:
    assert {t.key for t in BUILTIN_TEMPLATES} == set(CHATBOT_TYPES) - {"custom"}
    for builtin in BUILTIN_TEMPLATES:
        assert declare_variables(builtin.template, builtin.variables) == list(builtin.variables)
        text = render(builtin.template, builtin.variables, {})
        assert "{{" not in text and len(text) > 50
