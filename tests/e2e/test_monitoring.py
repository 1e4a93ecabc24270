"""The monitoring kit against a real scrape: every metric the dashboard (deploy/grafana) and the
alert rules (deploy/prometheus/alerts.yml) name is exposed by the running services, and every
family they expose follows the naming convention (docs/operations.md, "Metrics and scraping")."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy.grafana.dashboard import expressions
from tests.e2e.harness import System

REPO = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"\b((?:scoreboard|process|python)_[a-z0-9_]+)\b")
_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")
_CONVENTION = re.compile(
    r"^(scoreboard_(gateway|auth|score|broadcaster|http)_[a-z0-9_]+|process_.+|python_.+)$"
)


def _alert_expressions() -> list[str]:
    doc = yaml.safe_load((REPO / "deploy" / "prometheus" / "alerts.yml").read_text())
    return [rule["expr"] for group in doc["groups"] for rule in group["rules"]]


async def _scrape(http: aiohttp.ClientSession, system: System) -> dict[str, set[str]]:
    """Family name -> the services that expose it, from each service's /metrics."""
    found: dict[str, set[str]] = {}
    for name, service in system.services.items():
        async with http.get(f"{service.url}/metrics") as resp:
            assert resp.status == 200, name
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            found.setdefault(family.name, set()).add(name)
            for sample in family.samples:
                found.setdefault(sample.name, set()).add(name)
    return found


async def test_dashboard_and_alerts_name_only_scraped_metrics(
    system: System, http: aiohttp.ClientSession
) -> None:
    scraped = await _scrape(http, system)
    used = {m for expr in [*expressions(), *_alert_expressions()] for m in _NAME.findall(expr)}
    assert len(used) > 30
    missing = set()
    for metric in used:
        base = next((metric.removesuffix(s) for s in _SUFFIXES if metric.endswith(s)), metric)
        if metric not in scraped and base not in scraped:
            missing.add(metric)
    assert not missing, f"named in the dashboard or alerts, exported by no service: {missing}"


async def test_every_exported_family_follows_the_naming_convention(
    system: System, http: aiohttp.ClientSession
) -> None:
    scraped = await _scrape(http, system)
    families = {n for n in scraped if not n.endswith(_SUFFIXES)}
    assert {"process_cpu_seconds", "python_gc_collections"} <= families
    strays = sorted(n for n in families if not _CONVENTION.match(n))
    assert strays == []
