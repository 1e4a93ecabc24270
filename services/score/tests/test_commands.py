"""Decoding records: a command, or a poison message with the reason the DLQ will carry."""

from __future__ import annotations

import json
import uuid

import pytest

from common.command_signing import HEADER, CommandSigner, CommandVerifier, parse_key
from common.events import ScoreCommandEvent, encode
from score.commands import Admission, Command, Delivery, Poison, PoisonReason, decode
from services.score.tests.support import TEST_CATALOG, TRACEPARENT, command
from testkit.env import TEST_COMMAND_KEYS

KEY = parse_key(TEST_COMMAND_KEYS)
SIGNER = CommandSigner(KEY)
ADMISSION = Admission(
    CommandVerifier([KEY]), {name: int(spec["points"]) for name, spec in TEST_CATALOG.items()}
)
RECORD_KEY = b"key"


def _delivery(
    value: bytes | None, headers: tuple[tuple[str, bytes], ...] = (), *, sign: bool = True
) -> Delivery:
    signature = (SIGNER.header(RECORD_KEY, value),) if sign else ()
    return Delivery("t", 0, 7, RECORD_KEY, value, headers + signature)


def test_a_well_formed_command_decodes_with_its_trace_context() -> None:
    cmd = command(uuid.uuid4(), points=12)
    headers = (("traceparent", TRACEPARENT.encode()), ("other", b"x"))
    item = decode(
        _delivery(encode(ScoreCommandEvent.wrap(cmd, source="/gateway")), headers), ADMISSION
    )
    assert isinstance(item, Command)
    assert item.data == cmd
    assert item.delivery.trace_headers() == {"traceparent": TRACEPARENT}


def test_a_command_with_fields_this_version_does_not_know_is_applied() -> None:
    """A later v1 gateway may add optional fields (docs/events.md); dead-lettering them would
    lose every command published during the rollout."""
    body = _event_json(partitionkey="x")
    assert isinstance(body["data"], dict)
    body["data"]["combo"] = 3
    item = decode(_delivery(json.dumps(body).encode()), ADMISSION)
    assert isinstance(item, Command)


def _event_json(**changes: object) -> dict[str, object]:
    cmd = command(uuid.uuid4())
    body: dict[str, object] = json.loads(encode(ScoreCommandEvent.wrap(cmd, source="/gateway")))
    body.update(changes)
    return body


def _with_data(**changes: object) -> bytes:
    body = _event_json()
    data = body["data"]
    assert isinstance(data, dict)
    return json.dumps({**body, "data": {**data, **changes}}).encode()


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
        (b"[1, 2, 3]", PoisonReason.INVALID_SCHEMA),
        (b"[" * 20_000 + b"]" * 20_000, PoisonReason.INVALID_JSON),
        (_with_data(action_type="teleport"), PoisonReason.UNKNOWN_ACTION_TYPE),
        (_with_data(action_type="worth_5", points=6), PoisonReason.CATALOG_MISMATCH),
    ],
    ids=[
        "garbage",
        "truncated",
        "tombstone",
        "wrong-type",
        "bad-data",
        "array",
        "deep-nesting",
        "unknown-action-type",
        "points-not-the-catalogs",
    ],
)
def test_poison_is_recognised_with_its_reason(value: bytes | None, reason: PoisonReason) -> None:
    item = decode(_delivery(value), ADMISSION)
    assert isinstance(item, Poison)
    assert item.reason is reason
    assert item.detail
    assert item.delivery.value == value  # the DLQ gets the original bytes


def _good_value() -> bytes:
    return encode(ScoreCommandEvent.wrap(command(uuid.uuid4(), 7), source="/gateway"))


def test_a_record_not_signed_by_an_accepted_key_is_poison_before_it_is_parsed() -> None:
    value = _good_value()
    other = CommandSigner(parse_key("other:b3RoZXIta2V5LW9mLWF0LWxlYXN0LTMyLWJ5dGVzISE="))
    cases = {
        PoisonReason.UNSIGNED: _delivery(value, sign=False),
        PoisonReason.UNKNOWN_KEY: _delivery(value, (other.header(RECORD_KEY, value),), sign=False),
        PoisonReason.BAD_SIGNATURE: _delivery(
            value.replace(b'"points":7', b'"points":700'),
            (SIGNER.header(RECORD_KEY, value),),
            sign=False,
        ),
    }
    for reason, delivery in cases.items():
        item = decode(delivery, ADMISSION)
        assert isinstance(item, Poison), reason
        assert item.reason is reason
    # The key is covered too: the same value moved to another user's key does not verify.
    moved = Delivery("t", 0, 1, b"another", value, (SIGNER.header(RECORD_KEY, value),))
    item = decode(moved, ADMISSION)
    assert isinstance(item, Poison)
    assert item.reason is PoisonReason.BAD_SIGNATURE
    assert HEADER in dict(item.delivery.headers)
