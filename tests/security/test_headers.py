"""Security headers, HSTS behind a TLS proxy, and the CORS policy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from enclava.app import create_app
from enclava.config import Settings, SettingsError
from enclava.security.headers import API_CSP, DASHBOARD_CSP
from enclava.testing.server import serve_in_thread
from tests.conftest import Actors
from tests.security.conftest import AppClient


def csp_directives(header: str) -> dict[str, str]:
    return {
        part.strip().split(" ", 1)[0]: part.strip().partition(" ")[2]
        for part in header.split(";")
        if part.strip()
    }


async def test_every_response_carries_the_baseline_headers(
    client: httpx.AsyncClient, actors: Actors
) -> None:
    user = await actors.user()
    responses = [
        await client.get("/"),
        await client.get("/health"),
        await client.get("/api-internal/v1/auth/me", headers=user["headers"]),
        await client.get("/api/v1/models"),  # 401 or 404: errors carry them too
        await client.get("/no-such-page"),
        await client.get("/static/enclava.css"),
    ]
    for response in responses:
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "same-origin"
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert "strict-transport-security" not in response.headers  # plain HTTP
        assert response.headers["x-request-id"]


async def test_dashboard_csp_is_strict_and_the_pages_need_nothing_more(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == DASHBOARD_CSP
    directives = csp_directives(DASHBOARD_CSP)
    assert directives["script-src"] == "'self'" and directives["object-src"] == "'none'"
    assert "unsafe-inline" not in DASHBOARD_CSP and "unsafe-eval" not in DASHBOARD_CSP
    assert page.headers["cache-control"] == "no-store"
    # The policy holds only if the templates have no inline script, handler or style.
    templates = Path(__file__).parents[2] / "src/enclava/web/templates"
    for template in templates.glob("*.html"):
        html = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), template.name
        assert not re.search(r"\son[a-z]+\s*=", html), template.name
        assert not re.search(r"\sstyle\s*=|<style", html), template.name


async def test_api_responses_forbid_rendering_and_caching(client: httpx.AsyncClient) -> None:
    response = await client.get("/api-internal/v1/auth/me")
    assert response.headers["content-security-policy"] == API_CSP
    assert response.headers["cache-control"] == "no-store"
    static = await client.get("/static/enclava.css")
    assert static.headers.get("cache-control") != "no-store"


async def test_openapi_pages_get_their_own_policy(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    policy = csp_directives(docs.headers["content-security-policy"])
    assert policy["frame-ancestors"] == "'none'" and policy["object-src"] == "'none'"


async def test_hsts_only_over_tls(app_client: AppClient) -> None:
    async with app_client(base_url="https://testserver", hsts_max_age_s=600) as (_, client):
        response = await client.get("/health")
        assert response.headers["strict-transport-security"] == "max-age=600; includeSubDomains"


@pytest.mark.parametrize(("trusted", "expect_hsts"), [("127.0.0.1", True), ("10.9.9.9", False)])
def test_hsts_behind_a_tls_proxy_only_when_the_proxy_is_trusted(
    settings: Settings, trusted: str, expect_hsts: bool
) -> None:
    """uvicorn (as ``enclava serve`` runs it) believes X-Forwarded-Proto only from proxies in
    ENCLAVA_FORWARDED_ALLOW_IPS; HSTS follows."""
    app = create_app(settings)
    with (
        serve_in_thread(app, proxy_headers=True, forwarded_allow_ips=trusted) as url,
        httpx.Client(base_url=url) as http,
    ):
        response = http.get("/health", headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert ("strict-transport-security" in response.headers) is expect_hsts


async def test_cors_allows_only_the_configured_origins(app_client: AppClient) -> None:
    async with app_client(cors_origins=["https://app.example.com"]) as (_, client):
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        }
        allowed = await client.options(
            "/api/v1/chat/completions", headers={"Origin": "https://app.example.com", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "access-control-allow-credentials" not in allowed.headers
        denied = await client.options(
            "/api/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight}
        )
        assert denied.status_code == 400
        assert "access-control-allow-origin" not in denied.headers
        simple = await client.get("/health", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in simple.headers


async def test_no_cors_headers_without_configuration(client: httpx.AsyncClient) -> None:
    response = await client.get("/health", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in response.headers


@pytest.mark.parametrize(
    "values",
    [
        {"cors_origins": ["*"], "cors_allow_credentials": True},
        {"cors_origins": ["https://app.example.com/path"]},
        {"cors_origins": ["app.example.com"]},
    ],
)
def test_unsafe_cors_settings_are_refused(tmp_path: Path, values: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        Settings(_env_file=None, data_dir=tmp_path, **values)  # type: ignore[call-arg]


def test_wildcard_without_credentials_and_origin_lists_are_accepted(tmp_path: Path) -> None:
    for origins in (["*"], ["https://a.example.com", "http://localhost:3000"]):
        Settings(_env_file=None, data_dir=tmp_path, cors_origins=origins)  # type: ignore[call-arg]
