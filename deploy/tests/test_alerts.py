"""deploy/prometheus/alerts.yml: well-formed, documented, and about metrics that exist."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.health import registry_key
from deploy.prometheus import rules as prometheus_rules
from deploy.tests.markdown import anchors, github_anchor

Manifest = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
RUNBOOK = REPO / "docs" / "operations.md"
SERVICES = ("gateway", "auth", "score", "broadcaster")
SEVERITIES = {"page", "ticket"}
_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_METRIC = re.compile(r"\b(scoreboard_[a-z0-9_]+)\b")
_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def rules() -> list[Manifest]:
    """Every alerting rule in the file."""
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def exported_metrics() -> dict[str, str]:
    """Metric families the services export: base name -> type ("unknown" if only declared).

    Families registered when the app is built come from the app's own registry, with their
    type; families a service registers later (in a cleanup context) are found as string
    literals in its source, with no type.
    """
    found: dict[str, str] = {}
    for service in SERVICES:
        settings = importlib.import_module(f"{service}.settings").Settings.load()
        app = importlib.import_module(f"{service}.app").create_app(settings)
        for family in app[registry_key].collect():
            found[family.name] = family.type
    sources = [*REPO.glob("services/*/src/**/*.py"), *REPO.glob("libs/common/src/**/*.py")]
    for path in sources:
        for name in re.findall(r"[\"'](scoreboard_[a-z0-9_]+)[\"']", path.read_text()):
            found.setdefault(name, "unknown")
    return found


def test_every_alert_is_complete() -> None:
    """Unique names, a severity, a summary, a description, a valid `for`, a non-empty expr."""
    all_rules = rules()
    assert len(all_rules) >= 10
    names = [r["alert"] for r in all_rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in all_rules:
        name = rule["alert"]
        assert re.fullmatch(r"Scoreboard[A-Z][A-Za-z]+", name), name
        assert rule["expr"].strip(), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        if "for" in rule:
            assert _DURATION.match(rule["for"]), (name, rule["for"])


def test_every_alert_links_to_its_runbook_section() -> None:
    """runbook_url is absolute (Alertmanager shows it out of context), every link shares the one
    configured base, and its anchor is a heading of docs/operations.md named after the alert."""
    headings = anchors(RUNBOOK)
    base = prometheus_rules.current_base(ALERTS.read_text())
    assert re.fullmatch(r"https://[^\s#]+/docs/operations\.md", base), base
    for rule in rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == base, url
        assert anchor == github_anchor(rule["alert"]), url
        assert anchor in headings, f"docs/operations.md has no heading for {rule['alert']}"


def test_runbook_base_is_rewritten_in_one_place(tmp_path: Path) -> None:
    """The generator moves every link to a new base and leaves the rest of the file alone."""
    text = ALERTS.read_text()
    moved = prometheus_rules.with_runbook_base(text, "https://docs.example.org/ops.md")
    assert prometheus_rules.current_base(moved) == "https://docs.example.org/ops.md"
    assert len(prometheus_rules.runbook_urls(moved)) == len(rules())
    assert moved.count("\n") == text.count("\n")
    back = prometheus_rules.with_runbook_base(moved, prometheus_rules.current_base(text))
    assert back == text


def test_committed_prometheus_rule_is_the_generated_one() -> None:
    """deploy/k8s/components/monitoring/prometheusrule.yaml is rules.py's output for alerts.yml."""
    expected = prometheus_rules.prometheus_rule(ALERTS.read_text())
    assert prometheus_rules.PROMETHEUS_RULE.read_text() == expected, (
        "run `uv run python deploy/prometheus/rules.py`"
    )


def test_runbook_documents_no_alert_that_does_not_exist() -> None:
    """Each alert heading in the runbook belongs to a rule (no stale sections)."""
    documented = set(re.findall(r"^###\s+(Scoreboard[A-Za-z]+)\s*$", RUNBOOK.read_text(), re.M))
    assert documented == {r["alert"] for r in rules()}


def test_expressions_are_balanced() -> None:
    """Brackets, braces and quotes pair up (promtool, when present, checks the full syntax)."""
    pairs = {")": "(", "]": "[", "}": "{"}
    for rule in rules():
        stack: list[str] = []
        expr = re.sub(r'"[^"]*"', '""', rule["expr"])
        assert expr.count('"') % 2 == 0, rule["alert"]
        for char in expr:
            if char in "([{":
                stack.append(char)
            elif char in pairs:
                assert stack, rule["alert"]
                assert stack.pop() == pairs[char], rule["alert"]
        assert not stack, rule["alert"]


def test_alerts_use_metrics_the_services_export() -> None:
    """A misspelt metric makes an alert that can never fire; every one must really exist."""
    exported = exported_metrics()
    for rule in rules():
        for metric in _METRIC.findall(rule["expr"]):
            candidates = [
                (metric.removesuffix(suffix), kind)
                for kind, suffixes in _SUFFIXES.items()
                for suffix in suffixes
                if metric.endswith(suffix)
            ]
            ok = any(
                exported.get(base) in (kind, "unknown")
                for base, kind in candidates
                if base in exported
            )
            assert ok, f"{rule['alert']}: {metric} is not exported by any service"


def test_promtool_accepts_the_rules() -> None:
    """The real parser (promtool, from Debian's prometheus package: scripts/install-tools.sh)."""
    promtool = shutil.which("promtool") or str(Path.home() / "go" / "bin" / "promtool")
    if not Path(promtool).is_file():
        pytest.fail("promtool is missing: `make tools` (scripts/install-tools.sh) installs it")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
