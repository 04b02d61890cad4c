"""The dashboard's first-run flow in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, async_playwright, expect

from enclava.app import create_app
from enclava.config import Settings
from enclava.testing.server import serve_in_thread
from tests.conftest import PASSWORD, another_instance

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def live_url(settings: Settings) -> Iterator[str]:
    with serve_in_thread(create_app(another_instance(settings))) as url:
        yield url


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "Debian package chromium is required (.ci/run installs it)"
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield instance
        finally:
            await instance.close()


async def test_first_admin_setup_then_sign_out_and_in(
    live_url: str, browser: Browser, tmp_path: Path
) -> None:
    page = await browser.new_page()
    await page.goto(live_url + "/")
    await expect(page.locator("h1")).to_have_text("Welcome to Enclava")

    form = page.locator("#setup-form")
    await form.get_by_label("Email").fill("admin@example.com")
    await form.get_by_label("Password", exact=True).fill(PASSWORD)
    await form.get_by_label("Repeat password").fill(PASSWORD)
    await form.get_by_role("button", name="Create administrator").click()

    await expect(page.locator("h1")).to_have_text("Dashboard")
    await expect(page.locator(".who")).to_have_text("admin@example.com (admin)")
    await page.screenshot(path=str(tmp_path / "dashboard.png"))

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.locator("h1")).to_have_text("Sign in")

    login = page.locator("#login-form")
    await login.get_by_label("Email").fill("admin@example.com")
    await login.get_by_label("Password").fill("wrong password!")
    await login.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text("Incorrect email or password")

    await login.get_by_label("Password").fill(PASSWORD)
    await login.get_by_role("button", name="Sign in").click()
    await expect(page.locator("h1")).to_have_text("Dashboard")


async def test_setup_form_is_gone_after_first_admin(
    live_url: str, browser: Browser, actors: Any
) -> None:
    await actors.user("existing@example.com", role="admin")
    page = await browser.new_page()
    await page.goto(live_url + "/")
    await expect(page.locator("h1")).to_have_text("Sign in")
    assert await page.locator("#setup-form").count() == 0
