"""The batch rules (pure) and the ScoreChanged bytes they produce."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import pytest
from pydantic import BaseModel, Field

from common.events import SCORE_SOURCE, ScoreChanged, ScoreChangedEvent, encode
from score.apply import (
    Applied,
    UserState,
    changed_event,
    encoding_struct,
    outbox_headers,
    plan_batch,
)
from score.commands import Command, Delivery
from services.score.tests.support import TRACEPARENT, command

SCHEMA = Path(__file__).resolve().parents[3] / "schemas" / "score-changed.v1.json"


def _cmd(user: uuid.UUID, points: int, action_id: uuid.UUID | None = None) -> Command:
    headers = (("traceparent", TRACEPARENT.encode()),)
    return Command(Delivery("t", 0, 0, None, None, headers), command(user, points, action_id))


def test_versions_count_on_from_the_locked_row_in_stream_order() -> None:
    alice, bob = uuid.uuid4(), uuid.uuid4()
    users = {alice: UserState("alice", 100, 7), bob: UserState("bob", 0, 0)}
    batch = [_cmd(alice, 5), _cmd(bob, 1), _cmd(alice, 10), _cmd(bob, 2)]
    plan = plan_batch(batch, users, [])
    assert [(a.command.data.user_id, a.score, a.version) for a in plan.applied] == [
        (alice, 105, 8),
        (bob, 1, 1),
        (alice, 115, 9),
        (bob, 3, 2),
    ]
    assert plan.final == {alice: UserState("alice", 115, 9), bob: UserState("bob", 3, 2)}
    assert users[alice] == UserState("alice", 100, 7)  # the input is not modified


def test_duplicates_within_the_batch_and_against_the_table_change_nothing() -> None:
    alice = uuid.uuid4()
    done, twice = uuid.uuid4(), uuid.uuid4()
    batch = [_cmd(alice, 5, done), _cmd(alice, 3, twice), _cmd(alice, 3, twice), _cmd(alice, 1)]
    plan = plan_batch(batch, {alice: UserState("alice", 5, 1)}, [done])
    assert [a.version for a in plan.applied] == [2, 3]
    assert plan.final[alice].score == 9
    assert [d.data.action_id for d in plan.duplicates] == [done, twice]


def test_commands_for_unknown_users_are_set_aside() -> None:
    alice, ghost = uuid.uuid4(), uuid.uuid4()
    batch = [_cmd(ghost, 5), _cmd(alice, 5), _cmd(ghost, 1)]
    plan = plan_batch(batch, {alice: UserState("alice", 0, 0)}, [])
    assert [c.data.user_id for c in plan.unknown_users] == [ghost, ghost]
    assert [a.command.data.user_id for a in plan.applied] == [alice]


@pytest.mark.parametrize(
    "occurred_at",
    [datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC), datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)],
    ids=["microseconds", "whole-second"],
)
def test_changed_event_is_exactly_the_models_encoding(occurred_at: datetime) -> None:
    user = uuid.uuid4()
    applied = Applied(_cmd(user, 250), score=10**12, version=42)
    data = applied.command.data
    expected = encode(
        ScoreChangedEvent.wrap(
            ScoreChanged(
                action_id=data.action_id,
                user_id=user,
                username="Ada.Lovelace-1_x",
                delta=250,
                score=10**12,
                version=42,
                occurred_at=occurred_at,
            ),
            source=SCORE_SOURCE,
        )
    )
    payload = changed_event(applied, str(user), "Ada.Lovelace-1_x", occurred_at)
    assert payload == expected
    jsonschema.validate(json.loads(payload), json.loads(SCHEMA.read_text()))


def test_outbox_headers_carry_the_commands_trace_context() -> None:
    applied = Applied(_cmd(uuid.uuid4(), 1), score=1, version=1)
    assert json.loads(outbox_headers(applied)) == {"traceparent": TRACEPARENT}


def test_the_encoding_struct_mirrors_the_models_fields() -> None:
    event = encoding_struct(ScoreChangedEvent)
    assert event.__struct_fields__ == tuple(ScoreChangedEvent.model_fields)
    assert event.__annotations__["data"] is encoding_struct(ScoreChanged)
    assert encoding_struct(ScoreChanged).__struct_fields__ == tuple(ScoreChanged.model_fields)


def test_the_encoding_struct_refuses_what_it_cannot_mirror() -> None:
    class Aliased(BaseModel):
        name: str = Field(serialization_alias="n")

    with pytest.raises(TypeError, match="alias"):
        encoding_struct(Aliased)
