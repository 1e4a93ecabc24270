"""Leaderboards as operators define them, and the periods of their time windows.

A board has an id, a title, the action types that feed it (None: every type), its windows and the
time zone its periods reset in. Windows:

- ``all-time``: one period, ``all``, never reset.
- ``daily`` (``2026-12-02``), ``weekly`` (ISO weeks, ``2026-W49``), ``monthly`` (``2026-12``):
  a period starts at local midnight (on Monday, on the 1st) in the board's time zone, so a day is
  23 or 25 hours long across a DST change.
- ``season``: the board's explicit seasons, each ``[starts_at, ends_at)``, with ids of their own;
  between seasons the window has no current period and nothing counts in it.

An action counts in the period that contains its ``accepted_at`` (when the gateway accepted it),
never its apply time, so one accepted at 23:59:59.9 counts for that day even when the score
service applies it after midnight. Both the score service (writing the totals) and the
broadcaster (reading them, and telling clients the next reset) compute periods here.

The definitions live in PostgreSQL's ``boards`` table (migration 0005); the default board,
``global``, is created there and its all-time window is the one ``/api/scoreboard/*`` serves
(the ``scores`` table itself, not rows of ``board_scores``).
"""

from __future__ import annotations

import itertools
import json
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Final, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from common.events import ActionType, BoardWindow

Window = BoardWindow
WINDOWS: Final[tuple[Window, ...]] = get_args(Window)
DEFAULT_BOARD: Final = "global"
ALL_TIME: Final[Window] = "all-time"
ALL_TIME_PERIOD: Final = "all"

BoardId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
SeasonId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]


class Season(BaseModel):
    """One season of a board: ``[starts_at, ends_at)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: SeasonId
    starts_at: AwareDatetime
    ends_at: AwareDatetime

    @model_validator(mode="after")
    def _ordered(self) -> Season:
        if self.ends_at <= self.starts_at:
            raise ValueError(f"season {self.id}: ends_at must be after starts_at")
        return self


class BoardDefinition(BaseModel):
    """A board as an operator defines it (a table of the boards file, a row of ``boards``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    board_id: BoardId
    title: str = Field(min_length=1, max_length=80)
    # None: every action type feeds the board.
    action_types: tuple[ActionType, ...] | None = None
    windows: tuple[Window, ...] = Field(min_length=1)
    time_zone: str = "UTC"
    seasons: tuple[Season, ...] = ()
    # Past periods a window keeps in Redis (PostgreSQL keeps every one).
    redis_past_periods: int = Field(default=2, ge=0, le=100)
    # How many players a closed period's final standings carry (scoreboard.period-closed.v1).
    closed_top_n: int = Field(default=100, ge=1, le=1000)

    @field_validator("windows")
    @classmethod
    def _unique_windows(cls, windows: tuple[Window, ...]) -> tuple[Window, ...]:
        if len(set(windows)) != len(windows):
            raise ValueError("a window is listed twice")
        return windows

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, zone: str) -> str:
        if zone != "UTC" and zone not in available_timezones():
            raise ValueError(f"unknown time zone {zone!r} (an IANA name such as Europe/Paris)")
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {zone!r}") from exc
        return zone

    @model_validator(mode="after")
    def _seasons_fit(self) -> BoardDefinition:
        if ("season" in self.windows) != bool(self.seasons):
            raise ValueError("the season window needs seasons, and seasons need the window")
        ordered = sorted(self.seasons, key=lambda s: s.starts_at)
        for earlier, later in itertools.pairwise(ordered):
            if later.starts_at < earlier.ends_at:
                raise ValueError(f"seasons {earlier.id} and {later.id} overlap")
        if len({s.id for s in self.seasons}) != len(self.seasons):
            raise ValueError("two seasons share an id")
        return self


@dataclass(frozen=True, slots=True)
class Period:
    """One period of a window: its id and ``[starts_at, ends_at)`` (None: unbounded)."""

    window: Window
    id: str
    starts_at: datetime | None
    ends_at: datetime | None

    def contains(self, instant: datetime) -> bool:
        """True when ``instant`` falls in this period."""
        return (self.starts_at is None or self.starts_at <= instant) and (
            self.ends_at is None or instant < self.ends_at
        )

    def redis_until(self, past_periods: int) -> datetime | None:
        """When Redis may forget this period: ``past_periods`` period lengths after its end."""
        if self.ends_at is None or self.starts_at is None:
            return None
        return self.ends_at + (self.ends_at - self.starts_at) * past_periods

    def as_json(self) -> dict[str, Any]:
        """The period as the API shows it."""
        return {
            "period": self.id,
            "starts_at": self.starts_at.isoformat() if self.starts_at else None,
            "ends_at": self.ends_at.isoformat() if self.ends_at else None,
        }


class InvalidPeriod(ValueError):
    """A period id that is not one of the window's (wrong format, no such season)."""


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    # Midnight local time as an instant. Where a DST change skips midnight (a few zones), the
    # fold-0 reading is the instant just after the gap: the first moment of that day.
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _month_after(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


class Board:
    """A board definition with its period arithmetic (pure: the caller gives the instants)."""

    def __init__(self, definition: BoardDefinition) -> None:
        self.definition = definition
        self.id = definition.board_id
        self.zone = ZoneInfo(definition.time_zone)
        self._action_types = (
            None if definition.action_types is None else frozenset(definition.action_types)
        )
        self._seasons = sorted(definition.seasons, key=lambda s: s.starts_at)
        # The windows this board writes to board_scores: the default board's all-time window
        # is the scores table itself.
        self.counted_windows: tuple[Window, ...] = tuple(
            w for w in definition.windows if not (self.id == DEFAULT_BOARD and w == ALL_TIME)
        )
        # The last period each window resolved: most actions of a batch fall in it.
        self._recent: dict[Window, Period] = {}

    def feeds(self, action_type: str) -> bool:
        """True when actions of ``action_type`` count on this board."""
        return self._action_types is None or action_type in self._action_types

    def period_at(self, window: Window, instant: datetime) -> Period | None:
        """The period of ``window`` containing ``instant`` (None: between seasons)."""
        recent = self._recent.get(window)
        if recent is not None and recent.contains(instant):
            return recent
        period = self._compute(window, instant)
        if period is not None:
            self._recent[window] = period
        return period

    def _compute(self, window: Window, instant: datetime) -> Period | None:
        if window == "all-time":
            return Period(window, ALL_TIME_PERIOD, None, None)
        if window == "season":
            for s in self._seasons:
                if s.starts_at <= instant < s.ends_at:
                    return Period(window, s.id, s.starts_at, s.ends_at)
            return None
        local = instant.astimezone(self.zone).date()
        if window == "daily":
            return self._daily(local)
        if window == "weekly":
            return self._weekly(local - timedelta(days=local.weekday()))
        return self._monthly(local.replace(day=1))

    def _daily(self, day: date) -> Period:
        return Period(
            "daily",
            day.isoformat(),
            _local_midnight(day, self.zone),
            _local_midnight(day + timedelta(days=1), self.zone),
        )

    def _weekly(self, monday: date) -> Period:
        iso = monday.isocalendar()
        return Period(
            "weekly",
            f"{iso.year}-W{iso.week:02d}",
            _local_midnight(monday, self.zone),
            _local_midnight(monday + timedelta(days=7), self.zone),
        )

    def _monthly(self, first: date) -> Period:
        return Period(
            "monthly",
            f"{first.year}-{first.month:02d}",
            _local_midnight(first, self.zone),
            _local_midnight(_month_after(first), self.zone),
        )

    def parse_period(self, window: Window, raw: str) -> Period:
        """The period named ``raw`` in ``window``; :class:`InvalidPeriod` when there is none."""
        try:
            if window == "all-time" and raw == ALL_TIME_PERIOD:
                return Period(window, raw, None, None)
            if window == "daily" and len(raw) == 10:
                day = date.fromisoformat(raw)
                if day.isoformat() == raw:
                    return self._daily(day)
            if window == "weekly" and len(raw) == 8 and raw[4:6] == "-W":
                monday = date.fromisocalendar(int(raw[:4]), int(raw[6:]), 1)
                if raw[:4].isdigit() and raw[6:].isdigit():
                    return self._weekly(monday)
            if window == "monthly" and len(raw) == 7 and raw[4] == "-":
                first = date(int(raw[:4]), int(raw[5:]), 1)
                if raw[:4].isdigit() and raw[5:].isdigit():
                    return self._monthly(first)
            if window == "season":
                for s in self._seasons:
                    if s.id == raw:
                        return Period(window, s.id, s.starts_at, s.ends_at)
        except ValueError:
            pass
        raise InvalidPeriod(f"{raw!r} is not a period of the {window} window")

    def periods_between(self, window: Window, start: datetime, end: datetime) -> list[Period]:
        """The periods of ``window`` that ended in ``(start, end]``, oldest first."""
        if window == "all-time":
            return []
        if window == "season":
            return [
                Period(window, s.id, s.starts_at, s.ends_at)
                for s in self._seasons
                if start < s.ends_at <= end
            ]
        found: list[Period] = []
        period = self._compute(window, start)
        while period is not None and period.ends_at is not None and period.ends_at <= end:
            if period.ends_at > start:
                found.append(period)
            period = self._compute(window, period.ends_at)
        return found

    @cached_property
    def as_row(self) -> tuple[Any, ...]:
        """The definition as a row of ``boards`` (see :data:`UPSERT`)."""
        d = self.definition
        seasons = [s.model_dump(mode="json") for s in d.seasons]
        return (
            d.board_id,
            d.title,
            None if d.action_types is None else list(d.action_types),
            list(d.windows),
            d.time_zone,
            json.dumps(seasons),
            d.redis_past_periods,
            d.closed_top_n,
        )


# Every change bumps the revision (a sequence), so readers can tell that the catalog changed
# by reading one number. Boards are never deleted (their periods stay readable); ``retired``
# stops them counting.
UPSERT: Final = """
INSERT INTO boards (board_id, title, action_types, windows, time_zone, seasons,
                    redis_past_periods, closed_top_n)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8)
ON CONFLICT (board_id) DO UPDATE SET
    title = EXCLUDED.title, action_types = EXCLUDED.action_types, windows = EXCLUDED.windows,
    time_zone = EXCLUDED.time_zone, seasons = EXCLUDED.seasons,
    redis_past_periods = EXCLUDED.redis_past_periods, closed_top_n = EXCLUDED.closed_top_n,
    retired = false, revision = nextval('boards_revision_seq'), updated_at = now()
"""

REVISION: Final = "SELECT coalesce(max(revision), 0) FROM boards"

_SELECT: Final = """
SELECT (SELECT coalesce(max(revision), 0) FROM boards) AS revision,
       board_id, title, action_types, windows, time_zone, seasons::text AS seasons,
       redis_past_periods, closed_top_n
FROM boards WHERE NOT retired ORDER BY board_id
"""

Connection = asyncpg.Connection | PoolConnectionProxy | asyncpg.Pool


@dataclass(frozen=True)
class Catalog:
    """Every active board at one revision of the ``boards`` table."""

    revision: int
    boards: Mapping[str, Board]
    # feeding()'s answers: one scan of the boards per action type, not one per action (with
    # 100 boards the scan was a tenth of a batch's Python). The types are the action catalog's
    # (a command of any other is refused before it is counted), so this stays that small.
    _feeding: dict[str, tuple[Board, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def feeding(self, action_type: str) -> Sequence[Board]:
        """The boards an action of ``action_type`` counts on (the default board's all-time
        window aside, each has at least one window of its own to write)."""
        boards = self._feeding.get(action_type)
        if boards is None:
            boards = self._feeding[action_type] = tuple(
                b for b in self.boards.values() if b.counted_windows and b.feeds(action_type)
            )
        return boards


async def load_catalog(conn: Connection) -> Catalog:
    """Read the active boards and the catalog revision (one consistent read)."""
    rows = await conn.fetch(_SELECT)
    revision = rows[0]["revision"] if rows else await conn.fetchval(REVISION)
    boards = {r["board_id"]: Board(definition_of(r)) for r in rows}
    return Catalog(revision=int(revision), boards=boards)


def definition_of(row: asyncpg.Record) -> BoardDefinition:
    """A ``boards`` row as a definition."""
    return BoardDefinition(
        board_id=row["board_id"],
        title=row["title"],
        action_types=row["action_types"],
        windows=tuple(row["windows"]),
        time_zone=row["time_zone"],
        seasons=json.loads(row["seasons"]),
        redis_past_periods=row["redis_past_periods"],
        closed_top_n=row["closed_top_n"],
    )


def read_definitions(path: Path) -> list[BoardDefinition]:
    """The boards of a TOML file: one ``[[board]]`` table each (see docs/operations.md)."""
    with path.open("rb") as f:
        document = tomllib.load(f)
    extra = set(document) - {"board"}
    if extra:
        raise ValueError(f"{path}: unknown top-level keys {sorted(extra)} (only [[board]])")
    return [BoardDefinition.model_validate(table) for table in document.get("board", [])]


async def save_definitions(
    conn: asyncpg.Connection | PoolConnectionProxy, definitions: Iterable[BoardDefinition]
) -> int:
    """Create or replace boards in one transaction; returns how many were written."""
    rows = [Board(d).as_row for d in definitions]
    async with conn.transaction():
        await conn.executemany(UPSERT, rows)
    return len(rows)
