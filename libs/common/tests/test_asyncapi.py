"""docs/asyncapi.yaml names the contract's topics and points at the committed schemas."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from common.events import Topics
from common.keyspace import applied_channel

ROOT = Path(__file__).resolve().parents[3]


def test_asyncapi_describes_every_topic_with_its_schema() -> None:
    doc: dict[str, Any] = yaml.safe_load((ROOT / "docs" / "asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    expected = {
        Topics.COMMANDS,
        Topics.CHANGED,
        Topics.DLQ,
        Topics.FLAGGED,
        applied_channel("{redisPrefix}"),
    }
    assert addresses == expected
    for message in doc["components"]["messages"].values():
        ref = message["payload"].get("$ref")
        if ref:
            assert (ROOT / "docs" / ref).resolve().is_file(), ref
