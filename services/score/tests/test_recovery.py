"""Which outbox id a ScoreChanged record names, for the relay's takeover recovery.

A header the relay would not have written names no row: recovery stops its scan there rather
than mark an unsent row sent. (The scan itself, on real Kafka and PostgreSQL, is in
test_relay.py.)
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from aiokafka import ConsumerRecord

from score.outbox import OUTBOX_ID_HEADER
from score.recovery import _outbox_id

Header = tuple[str, bytes | None]


def _record(headers: Sequence[Header]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="scoreboard.score-changed.v1",
        partition=0,
        offset=0,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"{}",
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=2,
        headers=headers,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [(b"1", 1), (b"42", 42), (str(2**63 - 1).encode(), 2**63 - 1)],
)
def test_the_relays_header_names_its_row(value: bytes, expected: int) -> None:
    headers = [("traceparent", b"00-x"), (OUTBOX_ID_HEADER, value), ("content-type", b"x")]
    assert _outbox_id(_record(headers)) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"0",
        b"-1",
        b"+42",
        b" 42",
        b"42 ",
        b"42\n",
        b"4_2",
        b"042",
        b"0x2a",
        b"42.0",
        b"1e3",
        "\u0664\u0662".encode(),  # Arabic-Indic digits
        "\uff14\uff12".encode(),  # fullwidth digits
        str(2**63).encode(),  # past bigint
        b"9" * 19,
        b"1" * 400,
        b"\xff\xfe",
    ],
)
def test_any_other_value_names_no_row(value: bytes | None) -> None:
    assert _outbox_id(_record([(OUTBOX_ID_HEADER, value)])) is None


def test_a_record_without_the_header_names_no_row() -> None:
    assert _outbox_id(_record([("x-outbox", b"42"), ("X-Outbox-Id", b"42")])) is None


def test_two_ids_on_one_record_name_no_row() -> None:
    """The relay writes one; which of two to believe cannot be told, so neither is."""
    assert _outbox_id(_record([(OUTBOX_ID_HEADER, b"42"), (OUTBOX_ID_HEADER, b"42")])) is None
    assert _outbox_id(_record([(OUTBOX_ID_HEADER, b"42"), (OUTBOX_ID_HEADER, b"43")])) is None
    assert _outbox_id(_record([(OUTBOX_ID_HEADER, b"42"), (OUTBOX_ID_HEADER, b"x")])) is None
