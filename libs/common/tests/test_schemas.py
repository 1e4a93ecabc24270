"""The committed JSON Schemas match the models, and real messages validate against them."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
from pydantic import ValidationError

from common.events import (
    GATEWAY_SOURCE,
    SCHEMA_BASE,
    SCORE_SOURCE,
    PlayerFlagged,
    PlayerFlaggedEvent,
    ScoreChanged,
    ScoreChangedEvent,
    ScoreCommand,
    ScoreCommandEvent,
    encode,
)
from common.schemas import plain_text, render

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
    event = ScoreCommandEvent.wrap(_command(), source=GATEWAY_SOURCE)
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
    doc = json.loads(encode(ScoreChangedEvent.wrap(changed, source=SCORE_SOURCE)))
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
    doc = json.loads(encode(PlayerFlaggedEvent.wrap(flag, source=SCORE_SOURCE)))
    jsonschema.validate(doc, json.loads((SCHEMAS / "player-flagged.v1.json").read_text()))
    assert doc["id"] == doc["data"]["flag_id"]
    assert doc["subject"] == doc["data"]["user_id"]
    assert doc["type"] == "scoreboard.player.flagged.v1"
    assert doc["data"]["reason"] == "earning_rate"


def test_unknown_fields_are_ignored_and_bad_values_rejected() -> None:
    """docs/events.md: v1 may gain optional fields, so readers must not refuse them."""
    raw = json.loads(encode(ScoreCommandEvent.wrap(_command(), source=GATEWAY_SOURCE)))
    raw["data"]["bonus"] = 1
    raw["partitionkey"] = "an extension attribute"
    assert ScoreCommandEvent.model_validate(raw).data.points == 10
    raw["data"]["points"] = -5
    with pytest.raises(ValidationError):
        ScoreCommandEvent.model_validate(raw)
    raw["data"]["points"] = 5
    raw["data"]["issued_at"] = "2026-01-01T00:00:00"  # naive time: ambiguous, refused
    with pytest.raises(ValidationError):
        ScoreCommandEvent.model_validate(raw)


def test_records_from_before_the_absolute_source_and_dataschema_still_parse() -> None:
    """Retained records (and an old gateway's, during a rollout) have ``/gateway`` and no
    dataschema: readers must keep accepting them."""
    raw = json.loads(encode(ScoreCommandEvent.wrap(_command(), source=GATEWAY_SOURCE)))
    raw["source"] = "/gateway"
    del raw["dataschema"]
    event = ScoreCommandEvent.model_validate(raw)
    assert event.source == "/gateway"
    jsonschema.validate(raw, json.loads((SCHEMAS / "score-command.v1.json").read_text()))


@pytest.mark.parametrize("name", sorted(n for n in render() if n != "applied-notice.v1.json"))
def test_every_cloudevent_schema_requires_the_required_attributes(name: str) -> None:
    schema = json.loads(render()[name])
    assert {"specversion", "id", "source", "type", "data"} <= set(schema["required"])
    assert "additionalProperties" not in json.dumps(schema), "schemas stay open (docs/events.md)"


@pytest.mark.parametrize(
    "event", [ScoreCommandEvent, ScoreChangedEvent, PlayerFlaggedEvent], ids=lambda e: e.__name__
)
def test_dataschema_names_the_data_definition_of_the_committed_schema(event: type[Any]) -> None:
    url = event.model_fields["dataschema"].default
    document, _, pointer = url.partition("#")
    assert document.startswith(SCHEMA_BASE)
    schema = json.loads((SCHEMAS / document.removeprefix(SCHEMA_BASE)).read_text())
    assert schema["$id"] == document
    definition = schema["$defs"][pointer.removeprefix("/$defs/")]
    assert schema["properties"]["data"] == {"$ref": f"#{pointer}"}
    assert definition["title"] == event.model_fields["data"].annotation.__name__


def test_sources_are_absolute_uris() -> None:
    for source in (GATEWAY_SOURCE, SCORE_SOURCE):
        parts = urlsplit(source)
        assert parts.scheme == "https"
        assert parts.netloc
        assert parts.path.startswith("/services/")


def test_descriptions_are_plain_text() -> None:
    """No reST literals or roles reach the schemas integrators read."""
    assert plain_text("``a``'s :func:`common.x.y` and\n:class:`~b.C`\n\nnext") == (
        "a's common.x.y and b.C\n\nnext"
    )
    for name, text in render().items():
        assert "``" not in text, name
        assert not re.search(r":[a-z]+:`", text), name
