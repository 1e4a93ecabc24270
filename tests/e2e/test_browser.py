"""Two players in two real browser pages (headless Chromium): what one does, the other sees."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from tests.e2e.harness import System

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; .ci/run installs it


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, started the way this machine's closed network needs."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield browser
        await browser.close()


async def _sign_up(page: Page, username: str) -> None:
    form = page.locator("#register-form")
    await form.locator("input[name=username]").fill(username)
    await form.locator("input[name=password]").fill("correct horse battery")
    await form.locator("button[type=submit], input[type=submit]").first.click()
    await expect(page.locator("#logout")).to_be_visible(timeout=10_000)


async def test_two_players_see_each_other_live(system: System, browser: Browser) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    alice_name, bob_name = f"al{uuid.uuid4().hex[:8]}", f"bo{uuid.uuid4().hex[:8]}"
    alice = await browser.new_page(viewport={"width": 1200, "height": 900})
    bob = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
    for page in (alice, bob):
        await page.goto(system.gateway + "/")
        await expect(page.locator("#status")).to_contain_text("live", ignore_case=True)
    await _sign_up(alice, alice_name)
    await _sign_up(bob, bob_name)

    await alice.locator('#actions [data-action-type="quest"]').click()
    await expect(alice.locator("#result")).to_contain_text("50", timeout=15_000)
    applied_at = time.monotonic()
    row = bob.locator("#board [data-user-id]").filter(has_text=alice_name)
    await expect(row.locator(".score")).to_have_text("50", timeout=1_000)
    seen_after = time.monotonic() - applied_at
    await expect(alice.locator("#me-score")).to_have_text("50")

    await alice.screenshot(path=str(ARTIFACTS / "board-desktop.png"), full_page=True)
    await bob.screenshot(path=str(ARTIFACTS / "board-phone.png"), full_page=True)
    assert seen_after < 1.0, f"bob saw alice's score {seen_after:.3f}s after it was applied"
