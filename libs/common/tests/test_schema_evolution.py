"""The committed schemas follow the v1 evolution policy (docs/events.md, "Schema evolution policy").

Each schema in ``schemas/`` is compared with the same file at a base revision: the v1 baseline
(``V1_BASELINE``), ``HEAD`` (so a change not yet committed is caught too), and
``SCOREBOARD_SCHEMA_BASE`` when set. A v2 is a new file, which has nothing to compare with.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SCHEMAS = REPO / "schemas"
# The revision that completed the v1 contract (content-type header, absolute source, dataschema,
# required attributes, open schemas).
V1_BASELINE = "6e5d062ebcd6fc0367ff17faf5eedfba36ff4aed"
# What a field promises a validating consumer: any change to these is a v2.
VALIDATION = (
    "type",
    "const",
    "enum",
    "format",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "multipleOf",
    "uniqueItems",
)
Schema = dict[str, Any]


def _resolve(root: Schema, node: Schema) -> Schema:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/$defs/"), f"only local $defs references are compared: {ref}"
        node = root["$defs"][ref.removeprefix("#/$defs/")]
    return node


def breaking_changes(old_root: Schema, new_root: Schema) -> list[str]:
    """What in ``new_root`` breaks a consumer of ``old_root`` (empty: a v1-compatible change)."""
    problems: list[str] = []

    def walk(old: Schema, new: Schema, path: str) -> None:
        old, new = _resolve(old_root, old), _resolve(new_root, new)
        for key in VALIDATION:
            if old.get(key) != new.get(key):
                problems.append(f"{path}: {key} changed from {old.get(key)!r} to {new.get(key)!r}")
        closed = new.get("additionalProperties") is False
        if closed and old.get("additionalProperties") is not False:
            problems.append(f"{path}: closed with additionalProperties: false")
        for key in ("anyOf", "oneOf", "allOf"):
            if len(old.get(key, ())) != len(new.get(key, ())):
                problems.append(f"{path}: {key} changed")
            for i, (o, n) in enumerate(zip(old.get(key, ()), new.get(key, ()), strict=False)):
                walk(o, n, f"{path}.{key}[{i}]")
        newly_required = set(new.get("required", ())) - set(old.get("required", ()))
        problems.extend(f"{path}.{name}: newly required" for name in sorted(newly_required))
        new_properties = new.get("properties", {})
        for name, prop in old.get("properties", {}).items():
            if name not in new_properties:
                problems.append(f"{path}.{name}: removed")
            else:
                walk(prop, new_properties[name], f"{path}.{name}")
        if "items" in old:
            if "items" not in new:
                problems.append(f"{path}: items removed")
            else:
                walk(old["items"], new["items"], f"{path}[]")

    walk(old_root, new_root, "$")
    return problems


def _bases() -> list[str]:
    bases = [V1_BASELINE, "HEAD"]
    if extra := os.environ.get("SCOREBOARD_SCHEMA_BASE"):
        bases.append(extra)
    return bases


def _at(revision: str) -> dict[str, Schema]:
    """The schema files at ``revision``."""
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{revision}:schemas"],
        capture_output=True,
        text=True,
        check=False,
    )
    if listing.returncode != 0:
        pytest.fail(f"revision {revision} is not in this clone (a shallow one?): {listing.stderr}")
    out = {}
    for name in listing.stdout.split():
        if name.endswith(".json"):
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{revision}:schemas/{name}"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            out[name] = json.loads(text)
    return out


@pytest.mark.parametrize("revision", _bases())
def test_committed_schemas_only_change_as_v1_allows(revision: str) -> None:
    current = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.json")}
    for name, old in _at(revision).items():
        assert name in current, f"schemas/{name} was removed: retire a version, never delete it"
        assert breaking_changes(old, current[name]) == [], f"schemas/{name} against {revision}"


def test_no_schema_is_closed() -> None:
    for path in SCHEMAS.glob("*.json"):
        assert '"additionalProperties": false' not in path.read_text(), path.name


# The checker itself: each kind of breaking change is caught, the allowed ones are not.


def _changed() -> Schema:
    schema: Schema = json.loads((SCHEMAS / "score-changed.v1.json").read_text())
    return schema


def _edit(path: tuple[str, ...], change: Any) -> list[str]:
    old = _changed()
    new = copy.deepcopy(old)
    node = new
    for key in path:
        node = node[key]
    change(node)
    return breaking_changes(old, new)


DATA = ("$defs", "ScoreChanged")


def test_the_checker_allows_an_added_optional_field_and_new_descriptions() -> None:
    def add(node: Schema) -> None:
        node["properties"]["streak"] = {"type": "integer"}
        node["description"] = "reworded"

    assert _edit(DATA, add) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda n: n["properties"].pop("username"), "$.data.username: removed"),
        (lambda n: n["required"].append("boards"), "$.data.boards: newly required"),
        (lambda n: n["properties"]["score"].update(type="string"), "$.data.score: type changed"),
        (lambda n: n["properties"]["version"].update(minimum=2), "$.data.version: minimum"),
        (lambda n: n.update(additionalProperties=False), "$.data: closed"),
    ],
    ids=["removed", "newly-required", "type", "bound", "closed"],
)
def test_the_checker_catches_each_breaking_change(change: Any, expected: str) -> None:
    problems = _edit(DATA, change)
    assert any(p.startswith(expected) for p in problems), problems


def test_the_checker_follows_references_into_nested_definitions() -> None:
    def widen(node: Schema) -> None:
        node["properties"]["window"]["enum"].append("hourly")

    assert _edit(("$defs", "BoardChange"), widen)[0].startswith("$.data.boards[].window: enum")
