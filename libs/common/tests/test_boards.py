"""Board definitions and period arithmetic: boundaries in the board's zone, DST, ISO weeks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from common.boards import Board, BoardDefinition, InvalidPeriod, read_definitions

PARIS = ZoneInfo("Europe/Paris")


def _board(**fields: object) -> Board:
    values: dict[str, object] = {
        "board_id": "b",
        "title": "B",
        "windows": ("all-time", "daily", "weekly", "monthly"),
        "time_zone": "Europe/Paris",
    }
    values.update(fields)
    return Board(BoardDefinition.model_validate(values))


def test_an_action_at_23_59_59_9_local_counts_for_that_day() -> None:
    board = _board()
    before = datetime(2026, 12, 2, 23, 59, 59, 900_000, tzinfo=PARIS)
    after = datetime(2026, 12, 3, 0, 0, 0, 100_000, tzinfo=PARIS)
    day = board.period_at("daily", before)
    assert day is not None
    assert day.id == "2026-12-02"
    assert day.ends_at == datetime(2026, 12, 2, 23, 0, tzinfo=UTC)  # local midnight, UTC+1
    nxt = board.period_at("daily", after)
    assert nxt is not None
    assert nxt.id == "2026-12-03"
    assert nxt.starts_at == day.ends_at
    # The same instants seen from UTC are on one UTC day: the board's zone decides.
    assert before.astimezone(UTC).date() == after.astimezone(UTC).date()


def test_days_across_dst_changes_are_23_and_25_hours() -> None:
    board = _board()
    spring = board.parse_period("daily", "2026-03-29")  # clocks go forward at 02:00
    autumn = board.parse_period("daily", "2026-10-25")  # and back at 03:00
    assert spring.starts_at is not None
    assert spring.ends_at is not None
    assert autumn.starts_at is not None
    assert autumn.ends_at is not None
    assert spring.ends_at - spring.starts_at == timedelta(hours=23)
    assert autumn.ends_at - autumn.starts_at == timedelta(hours=25)
    # 00:30 local after the autumn change is still 2026-10-25; 23:30 local is too.
    late = datetime(2026, 10, 25, 22, 30, tzinfo=UTC)  # 23:30 CET
    period = board.period_at("daily", late)
    assert period is not None
    assert period.id == "2026-10-25"
    assert board.period_at("daily", late + timedelta(minutes=31)).id == "2026-10-26"  # type: ignore[union-attr]


def test_weeks_are_iso_weeks_and_months_calendar_months_in_the_zone() -> None:
    board = _board()
    instant = datetime(2026, 12, 2, 12, tzinfo=UTC)
    week = board.period_at("weekly", instant)
    assert week is not None
    assert week.id == "2026-W49"
    assert week.starts_at == datetime(2026, 11, 30, tzinfo=PARIS)
    assert week.ends_at == datetime(2026, 12, 7, tzinfo=PARIS)
    # 2027-01-01 is a Friday of ISO week 53 of 2026.
    assert board.period_at("weekly", datetime(2027, 1, 1, 12, tzinfo=UTC)).id == "2026-W53"  # type: ignore[union-attr]
    month = board.period_at("monthly", datetime(2026, 12, 31, 23, 30, tzinfo=UTC))  # Jan 1 local
    assert month is not None
    assert month.id == "2027-01"
    december = board.parse_period("monthly", "2026-12")
    assert december.ends_at == datetime(2027, 1, 1, tzinfo=PARIS)
    assert board.period_at("all-time", instant).id == "all"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("window", "raw"),
    [
        ("daily", "2026-13-01"),
        ("daily", "2026-2-01"),
        ("daily", "20261201"),
        ("weekly", "2026-W54"),
        ("weekly", "2026-W+1"),
        ("weekly", "2026-12"),
        ("monthly", "2026-00"),
        ("monthly", "2026-1a"),
        ("all-time", "2026"),
        ("season", "nope"),
        ("daily", ""),
    ],
)
def test_a_period_that_is_not_of_the_window_is_refused(window: str, raw: str) -> None:
    with pytest.raises(InvalidPeriod):
        _board().parse_period(window, raw)  # type: ignore[arg-type]


def test_seasons_are_explicit_and_leave_gaps() -> None:
    s1 = {"id": "s1", "starts_at": "2026-01-01T00:00:00Z", "ends_at": "2026-02-01T00:00:00Z"}
    s2 = {"id": "s2", "starts_at": "2026-03-01T00:00:00Z", "ends_at": "2026-04-01T00:00:00Z"}
    board = _board(windows=("season",), seasons=(s2, s1))
    assert board.period_at("season", datetime(2026, 1, 15, tzinfo=UTC)).id == "s1"  # type: ignore[union-attr]
    assert board.period_at("season", datetime(2026, 2, 15, tzinfo=UTC)) is None
    assert board.parse_period("season", "s2").ends_at == datetime(2026, 4, 1, tzinfo=UTC)
    closed = board.periods_between(
        "season", datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 5, 1, tzinfo=UTC)
    )
    assert [p.id for p in closed] == ["s1", "s2"]
    overlapping = {**s2, "starts_at": "2026-01-15T00:00:00Z"}
    with pytest.raises(ValidationError, match="overlap"):
        _board(windows=("season",), seasons=(s1, overlapping))
    with pytest.raises(ValidationError, match="season window needs seasons"):
        _board(windows=("season",))


def test_periods_between_lists_every_closed_period_once() -> None:
    board = _board()
    start = datetime(2026, 3, 28, 12, tzinfo=UTC)
    closed = board.periods_between("daily", start, start + timedelta(days=3))
    assert [p.id for p in closed] == ["2026-03-28", "2026-03-29", "2026-03-30"]
    assert board.periods_between("all-time", start, start + timedelta(days=3)) == []


@pytest.mark.parametrize(
    "fields",
    [
        {"board_id": "Bad Id"},
        {"windows": ()},
        {"windows": ("daily", "daily")},
        {"windows": ("hourly",)},
        {"time_zone": "Mars/Olympus"},
        {"action_types": ("Not A Type",)},
        {"redis_past_periods": -1},
    ],
)
def test_bad_definitions_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        _board(**fields)


def test_a_boards_file_defines_boards(tmp_path: Path) -> None:
    path = tmp_path / "boards.toml"
    path.write_text(
        """
[[board]]
board_id = "quests"
title = "Quest masters"
action_types = ["quest"]
windows = ["daily", "weekly"]
time_zone = "America/New_York"

[[board]]
board_id = "winter"
title = "Winter cup"
windows = ["season"]
seasons = [{ id = "w1", starts_at = 2026-12-01T00:00:00Z, ends_at = 2027-03-01T00:00:00Z }]
"""
    )
    quests, winter = read_definitions(path)
    assert quests.action_types == ("quest",)
    assert quests.time_zone == "America/New_York"
    assert Board(quests).feeds("quest")
    assert not Board(quests).feeds("daily_login")
    assert winter.seasons[0].id == "w1"
    assert winter.action_types is None
    path.write_text('[[boards]]\nboard_id = "x"\n')
    with pytest.raises(ValueError, match="unknown top-level"):
        read_definitions(path)
