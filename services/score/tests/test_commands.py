"""Decoding records: a command, or a poison message with the reason the DLQ will carry."""

from __future__ import annotations

import json
import uuid

import pytest

from common.events import ScoreCommandEvent, encode
from score.commands import Command, Delivery, Poison, PoisonReason, decode
from services.score.tests.support import TRACEPARENT, command


def _delivery(value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> Delivery:
    return Delivery("t", 0, 7, b"key", value, headers)


def test_a_well_formed_command_decodes_with_its_trace_context() -> None:
    cmd = command(uuid.uuid4(), points=12)
    headers = (("traceparent", TRACEPARENT.encode()), ("other", b"x"))
    item = decode(_delivery(encode(ScoreCommandEvent.wrap(cmd, source="/gateway")), headers))
    assert isinstance(item, Command)
    assert item.data == cmd
    assert item.delivery.trace_headers() == {"traceparent": TRACEPARENT}


def _event_json(**changes: object) -> dict[str, object]:
    cmd = command(uuid.uuid4())
    body: dict[str, object] = json.loads(encode(ScoreCommandEvent.wrap(cmd, source="/gateway")))
    body.update(changes)
    return body


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\x00\xffnot json", PoisonReason.INVALID_JSON),
        (b'{"specversion": "1.0", ', PoisonReason.INVALID_JSON),
        (None, PoisonReason.INVALID_JSON),
        (
            json.dumps(_event_json(type="scoreboard.score.changed.v1")).encode(),
            PoisonReason.WRONG_TYPE,
        ),
        (json.dumps(_event_json(data={"points": -1})).encode(), PoisonReason.INVALID_SCHEMA),
        (json.dumps(_event_json(extra="field")).encode(), PoisonReason.INVALID_SCHEMA),
        (b"[1, 2, 3]", PoisonReason.INVALID_SCHEMA),
    ],
    ids=["garbage", "truncated", "tombstone", "wrong-type", "bad-data", "unknown-field", "array"],
)
def test_poison_is_recognised_with_its_reason(value: bytes | None, reason: PoisonReason) -> None:
    item = decode(_delivery(value))
    assert isinstance(item, Poison)
    assert item.reason is reason
    assert item.detail
    assert item.delivery.value == value  # the DLQ gets the original bytes
