"""Where players stand: the board's order and the value types read from it.

Order: higher score first; for equal scores, whoever reached the score first (the contract's
order, docs/openapi.yaml); then the user id (ascending), which is exactly PostgreSQL's
``ORDER BY score DESC, reached_at ASC, user_id ASC`` (the ``scores_rank_idx`` index). Redis keeps
that order in one sorted set whose score is the points and whose member is :func:`member_for`:
``ZREVRANGE`` sorts equal points by member *descending*, so the member holds the reached-at time
and the user id with their digits inverted; descending inverted values are ascending originals.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS: Final = 10**16 - 1  # 16 digits of microseconds: good until the year 2286
_INVERT_HEX: Final = str.maketrans("0123456789abcdef", "fedcba9876543210")
MEMBER_LENGTH: Final = 16 + 1 + 32


def member_for(user_id: uuid.UUID, reached_at: datetime) -> str:
    """The sorted-set member of a user who reached their score at ``reached_at``."""
    micros = (reached_at - _EPOCH) // timedelta(microseconds=1)
    inverted_time = _MAX_MICROS - min(max(micros, 0), _MAX_MICROS)
    return f"{inverted_time:016d}:{user_id.hex.translate(_INVERT_HEX)}"


def reached_at_of_member(member: str) -> datetime:
    """The reached-at time inside a member made by :func:`member_for`."""
    return _EPOCH + timedelta(microseconds=_MAX_MICROS - int(member[:16]))


def user_of_member(member: str) -> uuid.UUID:
    """The user id inside a member made by :func:`member_for`."""
    return uuid.UUID(member[17:].translate(_INVERT_HEX))


@dataclass(frozen=True, slots=True)
class Entry:
    """One row of the top list."""

    rank: int
    user_id: str
    username: str
    score: int

    def as_json(self) -> dict[str, object]:
        """The entry as the API and the WebSocket show it."""
        return {
            "rank": self.rank,
            "user_id": self.user_id,
            "username": self.username,
            "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class TopSnapshot:
    """The first entries of the board at one board version."""

    version: int
    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one player stands; ``rank`` is None for a player who has not scored yet."""

    user_id: str
    username: str
    score: int
    rank: int | None

    def as_json(self) -> dict[str, object]:
        """The standing as ``GET /api/scoreboard/users/{id}`` shows it."""
        return {
            "user_id": self.user_id,
            "username": self.username,
            "score": self.score,
            "rank": self.rank,
        }


@dataclass(frozen=True, slots=True)
class Removal:
    """A deleted user, with the version PostgreSQL recorded when they left the board."""

    user_id: uuid.UUID
    version: int
    removed_at: datetime


@dataclass(frozen=True, slots=True)
class ScoreRow:
    """A user's score at one of their versions: what the board stores per user."""

    user_id: uuid.UUID
    username: str
    score: int
    version: int
    reached_at: datetime
    # Shadow quarantine: the most the public board shows of ``score`` (None: not held).
    held: int | None = None
