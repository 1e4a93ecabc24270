"""`make observe`'s Prometheus (scripts/observe.py) fires a real alert when a service stops.

A private system (its own slice, consumer groups and admin ports) and a private Prometheus
(Debian's server, on a free port) with a copy of deploy/prometheus/alerts.yml whose `for:`
durations are cut to seconds; the score service is killed and the test waits until
/api/v1/alerts reports ScoreboardServiceDown firing for job="score". The alert page is then
saved as a PNG by headless Chromium (test-artifacts/prometheus-alert.png; the one in
docs/images/ was taken this way).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from playwright.async_api import async_playwright

from scripts.observe import ALERTS, config, launch
from testkit.env import Infra, TestEnv, create_test_env, drop_test_env
from testkit.stack import free_port
from tests.e2e.harness import start_system

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
SHORT_FOR = "3s"


@pytest.fixture
async def private_env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A slice of its own: the killed score service is no consumer of anyone else's topics."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


def quick_rules(path: Path) -> Path:
    """alerts.yml with every `for:` shortened, so a test sees an alert fire in seconds."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = SHORT_FOR
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, url
        return (await resp.json())["data"]


async def _wait(what: str, check: Any, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not await check():
        assert time.monotonic() < deadline, f"{what}: not within {within_s} s"
        await asyncio.sleep(0.5)


def _service_down(alerts: list[dict[str, Any]], job: str, state: str) -> bool:
    return any(
        a["labels"]["alertname"] == "ScoreboardServiceDown"
        and a["labels"].get("job") == job
        and a["state"] == state
        for a in alerts
    )


async def test_stopping_a_service_fires_service_down(
    private_env: TestEnv, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    started = time.monotonic()
    system = start_system(private_env, admin_ports=True)
    prometheus = None
    try:
        targets = {
            name: f"127.0.0.1:{service.env['SCOREBOARD_ADMIN_PORT']}"
            for name, service in system.services.items()
        }
        rules = quick_rules(tmp_path / "alerts.yml")
        port = free_port()
        prometheus = launch(tmp_path / "prometheus", port, config(targets, rules, interval="1s"))
        api = f"http://127.0.0.1:{port}/api/v1"

        async def all_up() -> bool:
            result = (await _get(http, f"{api}/query?query=up"))["result"]
            return sorted(r["metric"]["job"] for r in result if r["value"][1] == "1") == sorted(
                targets
            )

        await _wait("every service scraped", all_up, 20)
        groups = (await _get(http, f"{api}/rules"))["groups"]
        loaded = {r["name"] for g in groups for r in g["rules"]}
        assert "ScoreboardServiceDown" in loaded
        assert len(loaded) >= 20
        await asyncio.sleep(4)  # longer than `for:`: nothing may fire while all are up
        alerts = (await _get(http, f"{api}/alerts"))["alerts"]
        assert not any(a["labels"]["alertname"] == "ScoreboardServiceDown" for a in alerts)

        system.services["score"].stop(signal.SIGKILL)
        killed = time.monotonic()

        async def firing() -> bool:
            alerts = (await _get(http, f"{api}/alerts"))["alerts"]
            return _service_down(alerts, "score", "firing")

        await _wait("ScoreboardServiceDown firing for score", firing, 30)
        fired_after = time.monotonic() - killed
        alerts = (await _get(http, f"{api}/alerts"))["alerts"]
        for job in ("gateway", "auth", "broadcaster"):
            assert not _service_down(alerts, job, "firing"), job
        page = f"http://127.0.0.1:{port}/classic/alerts"
        await _screenshot(page, ARTIFACTS / "prometheus-alert.png")
        print(f"fired {fired_after:.1f} s after the kill; {time.monotonic() - started:.1f} s total")
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=20)
        system.stop()


async def _screenshot(url: str, out: Path) -> None:
    """Prometheus's alert page with the firing alert expanded, in headless Chromium."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-quic"]
        )
        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await page.goto(url)
        await page.get_by_text("ScoreboardServiceDown").first.click(timeout=10_000)
        out.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(out), full_page=False)
        await browser.close()
