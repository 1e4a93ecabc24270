"""`make bench`: run every benchmark program, collect their JSON, draw one PNG.

Each bench/bench_*.py prints one JSON object as its last stdout line. Results land in
bench/results/results.json and bench/results/results.png. Benchmarks are programs that report
numbers; nothing here passes or fails on a threshold (targets are printed next to the numbers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_TIMEOUT_S = 900
# Longer ones: bench_boards loads and rebuilds a board of a million players, then applies
# commands on 100 boards, which on the 2-core machine takes tens of seconds per batch.
TIMEOUTS_S = {"bench_boards": 2700}


def run(script: Path) -> dict[str, Any]:
    """Run one benchmark, echo its output, return its JSON."""
    print(f"== {script.name}", flush=True)
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUTS_S.get(script.stem, DEFAULT_TIMEOUT_S),
        check=False,
    )
    sys.stdout.write(proc.stdout)
    sys.stderr.write(proc.stderr[-4000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "seconds": round(time.monotonic() - start, 1)}
    result: dict[str, Any] = json.loads(lines[-1])
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def chart(results: dict[str, dict[str, Any]], path: Path) -> None:
    """One bar per numeric headline (each benchmark's `headline` dict), next to its target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [
        (f"{name}\n{key}", float(value), (res.get("targets") or {}).get(key))
        for name, res in results.items()
        for key, value in (res.get("headline") or {}).items()
    ]
    if not rows:
        return
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.6 * len(rows)), squeeze=False)
    for ax, (label, value, target) in zip(axes[:, 0], rows, strict=True):
        ax.barh([0], [value], color="#3b82f6")
        if target is not None:
            ax.axvline(float(target), color="#ef4444", linestyle="--", label=f"target {target}")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks([0], [label], fontsize=8)
        ax.bar_label(ax.containers[0], fmt="%.3g", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    """Run them all (or those named on the command line)."""
    RESULTS.mkdir(exist_ok=True)
    wanted = set(sys.argv[1:])
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not wanted or p.stem in wanted)
    results = {p.stem: run(p) for p in scripts}
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    chart(results, RESULTS / "results.png")
    print(f"wrote {RESULTS / 'results.json'} and {RESULTS / 'results.png'}")


if __name__ == "__main__":
    main()
