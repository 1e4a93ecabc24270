"""Screenshot the live board (the README's picture), from a running `make demo`.

    make demo &            # the services plus simulated players
    uv run python scripts/screenshot.py [--gateway URL] [--out docs/images/board.png]

Signs up a fresh player in headless Chromium (Debian's package, as the browser test uses),
completes one quest, and saves the page once the simulated players fill the top 10.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid
from pathlib import Path

from playwright.async_api import async_playwright, expect

CHROMIUM = "/usr/bin/chromium"


async def shoot(gateway: str, out: Path) -> None:
    """Open the page, sign up, do a quest, wait for a full board, save a PNG."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        page = await browser.new_page(viewport={"width": 1200, "height": 760})
        await page.goto(gateway + "/")
        await expect(page.locator("#status")).to_contain_text("live", ignore_case=True)
        form = page.locator("#register-form")
        await form.locator("input[name=username]").fill(f"you-{uuid.uuid4().hex[:6]}")
        await form.locator("input[name=password]").fill("correct horse battery")
        await form.locator("button[type=submit], input[type=submit]").first.click()
        await expect(page.locator("#logout")).to_be_visible(timeout=10_000)
        await page.locator('#actions [data-action-type="quest"]').click()
        await expect(page.locator("#result")).to_contain_text("50", timeout=15_000)
        await expect(page.locator("#board [data-user-id]")).to_have_count(10, timeout=60_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(out))
        await browser.close()
    print(f"wrote {out}")


def main() -> None:
    """Parse the arguments and take the picture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--out", type=Path, default=Path("docs/images/board.png"))
    args = parser.parse_args()
    asyncio.run(shoot(args.gateway, args.out))


if __name__ == "__main__":
    main()
