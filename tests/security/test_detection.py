"""Threat detection in front of the real application: modes, error shapes, audit rows, and
what is deliberately never scanned."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
from sqlalchemy import select

from enclava.models import AuditLog, User
from enclava.testing.threat_corpus import load_jsonl
from tests.conftest import PASSWORD, Actors
from tests.security.conftest import DATA, AppClient

ATTACK_NAME = "<script>alert(document.cookie)</script>"


async def threat_rows(app: Any) -> list[AuditLog]:
    async with app.state.enclava.session_factory() as session:
        result = await session.execute(
            select(AuditLog).where(AuditLog.action == "security.threat_detected")
        )
        return list(result.scalars())


async def user_exists(app: Any, email: str) -> bool:
    async with app.state.enclava.session_factory() as session:
        return (await session.scalar(select(User.id).where(User.email == email))) is not None


async def test_block_mode_refuses_with_request_id_and_audits(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    admin = await actors.user(role="admin")
    response = await client.post(
        "/api-internal/v1/users",
        json={"email": "victim@example.com", "password": PASSWORD, "full_name": ATTACK_NAME},
        headers={**admin["headers"], "X-Request-ID": "req-threat-0001"},
    )
    assert response.status_code == 403
    assert response.headers["x-request-id"] == "req-threat-0001"
    body = response.json()
    assert body["code"] == "threat_detected"
    assert "req-threat-0001" in body["detail"]
    assert not await user_exists(app, "victim@example.com")

    (row,) = await threat_rows(app)
    assert row.success is False and row.request_id == "req-threat-0001"
    assert row.details["blocked"] is True
    assert "xss.script_tag" in row.details["rules"]
    locations = {f["location"] for f in row.details["findings"]}
    assert "body:full_name" in locations
    for finding in row.details["findings"]:
        assert len(finding["excerpt"]) <= 48
        assert finding["excerpt"] != ATTACK_NAME.lower()


async def test_public_api_blocks_in_openai_shape(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/models", params={"filter": "' OR '1'='1' --"})
    assert response.status_code == 403
    error = response.json()["error"]
    assert error["code"] == "threat_detected" and error["type"] == "permission_error"
    assert response.headers["x-request-id"] in error["message"]


async def test_path_query_and_header_locations(app: Any, client: httpx.AsyncClient) -> None:
    cases: list[tuple[str, dict[str, str], str]] = [
        ("/static/..%2f..%2f..%2fetc%2fpasswd", {}, "path"),
        ("/api-internal/v1/users?search=%3B%20cat%20%2Fetc%2Fpasswd", {}, "query:search"),
        (
            "/api-internal/v1/auth/me",
            {"User-Agent": "() { :; }; /bin/bash -c id"},
            "header:user-agent",
        ),
        (
            "/api-internal/v1/auth/me",
            {"Referer": "https://x.example/?q=<svg/onload=alert(1)>"},
            "header:referer",
        ),
    ]
    # Twice each: the path and User-Agent findings are remembered, and must come out the same.
    for _ in range(2):
        for path, headers, _ in cases:
            response = await client.get(path, headers=headers)
            assert response.status_code == 403, (path, response.text)
    rows = await threat_rows(app)
    assert len(rows) == 2 * len(cases)
    seen = Counter(json.dumps(row.details["findings"], sort_keys=True) for row in rows)
    assert sorted(seen.values()) == [2] * len(cases)
    recorded = {f["location"] for row in rows for f in row.details["findings"]}
    assert {location for _, _, location in cases} <= recorded


async def test_log_mode_lets_the_request_through_and_audits(app_client: AppClient) -> None:
    async with app_client(threat_detection="log") as (app, client):
        admin = await Actors(app, client).user(role="admin")
        response = await client.post(
            "/api-internal/v1/users",
            json={"email": "logged@example.com", "password": PASSWORD, "full_name": ATTACK_NAME},
            headers=admin["headers"],
        )
        assert response.status_code == 201, response.text
        # The body reached the application exactly as sent.
        assert response.json()["full_name"] == ATTACK_NAME
        (row,) = await threat_rows(app)
        assert row.details["blocked"] is False and row.success is True


async def test_off_mode_does_nothing(app_client: AppClient) -> None:
    async with app_client(threat_detection="off") as (app, client):
        response = await client.get("/api/v1/models", params={"q": "' OR 1=1 --"})
        assert response.status_code != 403
        assert await threat_rows(app) == []


async def test_llm_content_is_never_blocked(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    """Prompts full of SQL, shell and HTML pass every content route of both APIs (whatever
    the route answers once its domain is merged, it is not the threat scanner's 403)."""
    user = await actors.user()
    key = await actors.api_key(
        user, scopes=["llm.chat", "llm.embeddings", "rag.read", "rag.write", "chatbot.use"]
    )
    some_id = "3f1c9a8e-5b7d-4c2e-9a1f-0d6b8e2c4a10"
    prompts = [entry["prompt"] for entry in load_jsonl(DATA / "benign_prompts.jsonl")]
    for prompt in prompts[::6]:
        message = [{"role": "user", "content": prompt}]
        requests: list[tuple[str, dict[str, Any], dict[str, str]]] = [
            ("/api/v1/chat/completions", {"model": "m", "messages": message}, key["headers"]),
            ("/api/v1/embeddings", {"model": "e", "input": prompt}, key["headers"]),
            (
                "/api/v1/chatbot/interact",
                {"chatbot_id": some_id, "message": prompt},
                key["headers"],
            ),
            (f"/api/v1/rag/collections/{some_id}/search", {"query": prompt}, key["headers"]),
            (f"/api-internal/v1/chatbots/{some_id}/chat", {"message": prompt}, user["headers"]),
            (
                f"/api-internal/v1/rag/collections/{some_id}/search",
                {"query": prompt},
                user["headers"],
            ),
        ]
        for path, body, headers in requests:
            response = await client.post(path, json=body, headers=headers)
            assert "threat_detected" not in response.text, (path, prompt)
    assert await threat_rows(app) == []


async def test_secret_fields_are_never_scanned_or_recorded(
    app: Any, client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    odd_password = "x'; DROP TABLE users; -- <script>"
    response = await client.post(
        "/api-internal/v1/auth/login", json={"email": user["email"], "password": odd_password}
    )
    assert response.status_code == 401  # a wrong password, not a blocked request
    assert await threat_rows(app) == []


async def test_bodies_over_the_scan_limit_pass_unscanned_and_intact(
    app_client: AppClient,
) -> None:
    async with app_client(threat_scan_max_body_bytes=1024) as (app, client):
        admin = await Actors(app, client).user(role="admin")
        body = {
            "email": "big@example.com",
            "password": PASSWORD,
            "full_name": ATTACK_NAME,
            "padding": "x" * 4096,
        }
        response = await client.post("/api-internal/v1/users", json=body, headers=admin["headers"])
        assert response.status_code == 201, response.text
        assert response.json()["full_name"] == ATTACK_NAME
        assert await threat_rows(app) == []
