"""The committed JSON Schemas match the models, and real messages validate against them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from common.events import (
    PlayerFlagged,
    PlayerFlaggedEvent,
    ScoreChanged,
    ScoreChangedEvent,
    ScoreCommand,
    ScoreCommandEvent,
    encode,
)
from common.schemas import render

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@pytest.mark.parametrize("name", sorted(render()))
def test_committed_schema_matches_model(name: str) -> None:
    committed = (SCHEMAS / name).read_text()
    assert committed == render()[name], f"schemas/{name} drifted: run `make schemas`"


def _command() -> ScoreCommand:
    now = datetime.now(UTC)
    return ScoreCommand(
        action_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        action_type="quest",
        points=10,
        issued_at=now,
        accepted_at=now,
    )


def test_command_event_validates_against_schema() -> None:
    event = ScoreCommandEvent.wrap(_command(), source="/gateway")
    doc = json.loads(encode(event))
    jsonschema.validate(doc, json.loads((SCHEMAS / "score-command.v1.json").read_text()))
    assert doc["specversion"] == "1.0"
    assert doc["id"] == doc["data"]["action_id"]
    assert doc["subject"] == doc["data"]["user_id"]


def test_changed_event_validates_against_schema() -> None:
    cmd = _command()
    changed = ScoreChanged(
        action_id=cmd.action_id,
        user_id=cmd.user_id,
        username="alice",
        delta=10,
        score=30,
        version=3,
        occurred_at=datetime.now(UTC),
    )
    doc = json.loads(encode(ScoreChangedEvent.wrap(changed, source="/score")))
    jsonschema.validate(doc, json.loads((SCHEMAS / "score-changed.v1.json").read_text()))
    assert doc["id"] == f"{cmd.user_id}:3"


def test_flagged_event_validates_against_schema() -> None:
    flag = PlayerFlagged(
        flag_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        username="mallory",
        rate=98.5,
        z=11.2,
        median=12.0,
        mad=4.5,
        active_players=51,
        tau_s=5.0,
        flagged_at=datetime.now(UTC),
    )
    doc = json.loads(encode(PlayerFlaggedEvent.wrap(flag, source="/score")))
    jsonschema.validate(doc, json.loads((SCHEMAS / "player-flagged.v1.json").read_text()))
    assert doc["id"] == doc["data"]["flag_id"]
    assert doc["subject"] == doc["data"]["user_id"]
    assert doc["type"] == "scoreboard.player.flagged.v1"
    assert doc["data"]["reason"] == "earning_rate"


def test_unknown_fields_and_bad_values_are_rejected() -> None:
    raw = json.loads(encode(ScoreCommandEvent.wrap(_command(), source="/gateway")))
    raw["data"]["bonus"] = 1
    with pytest.raises(ValidationError):
        ScoreCommandEvent.model_validate(raw)
    raw["data"].pop("bonus")
    raw["data"]["points"] = -5
    with pytest.raises(ValidationError):
        ScoreCommandEvent.model_validate(raw)
    raw["data"]["points"] = 5
    raw["data"]["issued_at"] = "2026-01-01T00:00:00"  # naive time: ambiguous, refused
    with pytest.raises(ValidationError):
        ScoreCommandEvent.model_validate(raw)
