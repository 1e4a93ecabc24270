"""The short variant of `make chaos` (issue 11): bench/chaos.py for 30 s at 100 updates/s with
four faults (a gateway, score, PostgreSQL and Redis killed and restarted, one at a time) must
report 0 lost, 0 doubled, 0 ScoreChanged missing, 0 ScoreChanged doubled, and the board
converged: the program's own verdict, its exit status 0.

The program starts PostgreSQL, Redis and Kafka of its own on free ports (it kills them), so this
test touches neither the shared servers nor other tests' data. It prints its progress and a
summary; on failure the summary is the assertion message. `make chaos` is the long run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHORT = [
    "--seconds", "30",
    "--rate", "100",
    "--players", "80",
    "--watchers", "10",
    "--faults", "gateway,score,postgres,redis",
]  # fmt: skip
RUN_LIMIT_S = 240  # typically about 2 minutes, the servers' start included

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def _missing_tools() -> list[str]:
    needed = ["redis-server", "java"]
    missing = [tool for tool in needed if shutil.which(tool) is None]
    if not Path("/usr/lib/postgresql").is_dir():
        missing.append("PostgreSQL server (/usr/lib/postgresql)")
    return missing


def _run(args: list[str], out: Path) -> tuple[int, str]:
    """Run the program; on overrun stop it with SIGTERM (it then stops what it started)."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), *args, "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=RUN_LIMIT_S)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            output, _ = proc.communicate(timeout=45)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"bench/chaos.py did not finish within {RUN_LIMIT_S} s:\n{output[-6000:]}")
    return proc.returncode, output


@pytest.mark.timeout(RUN_LIMIT_S + 90)
def test_chaos_short_variant_loses_and_doubles_nothing(tmp_path: Path) -> None:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the chaos run starts local servers; missing: {', '.join(missing)}")
    status, output = _run(SHORT, tmp_path)
    report = output[output.rfind("== chaos") :] if "== chaos" in output else output[-6000:]
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert lines, f"no summary (exit status {status}):\n{output[-6000:]}"
    summary: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in summary, f"the harness failed: {summary['error']}\n{output[-6000:]}"
    verdict = {
        "lost": summary["lost"],
        "doubled": summary["doubled"],
        "events missing": summary["events"]["missing"],
        "events doubled": summary["events"]["doubled"],
        "converged": summary["board"]["converged"],
    }
    expected = {
        "lost": 0,
        "doubled": 0,
        "events missing": 0,
        "events doubled": 0,
        "converged": True,
    }
    assert verdict == expected, report
    assert status == 0, report
