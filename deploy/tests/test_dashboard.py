"""deploy/grafana: the committed dashboard is the generated one, and every query parses.

That every metric it names is exported is checked against a real scrape of the running
services in tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.grafana.dashboard import OUT, ROWS, expressions, render

PROMTOOL = shutil.which("promtool") or str(Path.home() / "go" / "bin" / "promtool")


def test_committed_dashboard_is_the_generated_one() -> None:
    assert OUT.read_text() == render(), "run `uv run python deploy/grafana/dashboard.py`"


def test_the_dashboard_covers_the_system() -> None:
    doc = json.loads(OUT.read_text())
    rows = [p["title"] for p in doc["panels"] if p["type"] == "row"]
    assert rows == list(ROWS)
    for word in ("Ingest", "Apply", "Fan-out", "Errors", "Lag", "Saturation"):
        assert any(word in row for row in rows), word
    panels = [p for p in doc["panels"] if p["type"] == "timeseries"]
    assert all(p["targets"] and p["datasource"]["uid"] == "${datasource}" for p in panels)


def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    """Each query as a recording rule (Grafana's $__rate_interval as 5m), through the real
    parser; the alert rules go through it in test_alerts.py."""
    if not Path(PROMTOOL).is_file():
        pytest.fail("promtool is missing: `make tools` (scripts/install-tools.sh) installs it")
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, expr in enumerate(expressions())
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
