"""docs/asyncapi.yaml names the contract's topics, points at the committed schemas, and parses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.events import Topics
from common.keyspace import applied_channel

ROOT = Path(__file__).resolve().parents[3]
TOOLS = Path(os.environ.get("SCOREBOARD_TOOLS_DIR", Path.home() / ".cache" / "scoreboard"))


def test_asyncapi_describes_every_topic_with_its_schema() -> None:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    expected = {
        Topics.COMMANDS,
        Topics.CHANGED,
        Topics.DLQ,
        Topics.FLAGGED,
        Topics.PERIOD_CLOSED,
        Topics.REMOVALS,
        applied_channel("{redisPrefix}"),
    }
    assert addresses == expected
    for message in doc["components"]["messages"].values():
        ref = message["payload"].get("$ref")
        if ref:
            assert (ROOT / "docs" / ref).resolve().is_file(), ref


def test_the_asyncapi_parser_accepts_the_document() -> None:
    """The reference parser (@asyncapi/parser: the spec's JSON Schemas, Spectral's AsyncAPI
    rules, every $ref resolved, ../schemas/*.json included), run with the machine's Node.js;
    scripts/install-tools.sh installs it into the tools cache."""
    node = shutil.which("node")
    modules = TOOLS / "asyncapi" / "node_modules"
    if node is None or not (modules / "@asyncapi" / "parser").is_dir():
        pytest.fail("the AsyncAPI parser is missing: `make tools` (scripts/install-tools.sh)")
    result = subprocess.run(
        [node, str(ROOT / "scripts" / "asyncapi" / "check.cjs"), str(ROOT / "docs/asyncapi.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "NODE_PATH": str(modules)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    *diagnostics, summary = (json.loads(line) for line in result.stdout.splitlines())
    assert [d for d in diagnostics if d["severity"] in {"error", "warning"}] == []
    assert summary["ok"]
    assert set(summary["channels"]) >= {Topics.COMMANDS, Topics.CHANGED, Topics.DLQ}
