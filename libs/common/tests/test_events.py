"""What the event models leave to their readers: numbers past what a double holds exactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from common.events import MAX_POINTS, MAX_SAFE_INTEGER, BoardChange, ScoreChanged, out_of_range


def _change(**fields: object) -> ScoreChanged:
    values: dict[str, object] = {
        "action_id": uuid.uuid4(),
        "user_id": uuid.uuid4(),
        "username": "alice",
        "delta": 10,
        "score": 30,
        "version": 3,
        "occurred_at": datetime.now(UTC),
        **fields,
    }
    return ScoreChanged.model_validate(values)


def _entry(score: int = 10, entries: int = 1) -> BoardChange:
    return BoardChange(
        board="main", window="daily", period="2026-01-01", score=score, entries=entries
    )


def test_the_largest_honest_numbers_are_in_range() -> None:
    change = _change(
        delta=MAX_POINTS,
        score=MAX_SAFE_INTEGER,
        version=MAX_SAFE_INTEGER,
        boards=(_entry(MAX_SAFE_INTEGER, MAX_SAFE_INTEGER),),
    )
    assert out_of_range(change) is None
    assert float(MAX_SAFE_INTEGER) == MAX_SAFE_INTEGER  # exact as a double
    assert float(MAX_SAFE_INTEGER + 2) != MAX_SAFE_INTEGER + 2  # the first that is not


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"delta": MAX_POINTS + 1}, "delta"),
        ({"delta": 10**400}, "delta"),
        ({"score": MAX_SAFE_INTEGER + 1}, "score"),
        ({"score": 10**400}, "score"),
        ({"version": 2**63}, "version"),
        ({"boards": (_entry(), _entry(score=10**20))}, "boards.1.score"),
        ({"boards": (_entry(entries=MAX_SAFE_INTEGER + 1),)}, "boards.0.entries"),
    ],
)
def test_a_number_past_the_bounds_is_named(fields: dict[str, object], field: str) -> None:
    assert out_of_range(_change(**fields)) == field
