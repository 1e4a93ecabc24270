"""The messages on our Kafka topics: CloudEvents 1.0 (structured mode) with typed ``data``.

These models are the source of truth for the JSON Schemas in ``schemas/`` (``make schemas``
regenerates them; a test fails when a committed schema drifts from its model). The models ignore
fields they do not know, as docs/events.md asks of every consumer: within v1 a producer may add
optional fields, so a reader that refused them would break on the first such release.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Final, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

SPEC_VERSION: Final = "1.0"
CONTENT_TYPE: Final = "application/json"

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
STRUCTURED_MODE_HEADER: Final = ("content-type", STRUCTURED_CONTENT_TYPE.encode())
"""The Kafka protocol binding's header for a structured-mode event: every record we publish
carries it, and CloudEvents SDKs decode the value as a whole event only when it is there."""

SOURCE_BASE: Final = "https://scoreboard.dev/services/"
GATEWAY_SOURCE: Final = SOURCE_BASE + "gateway"
SCORE_SOURCE: Final = SOURCE_BASE + "score"
SCHEMA_BASE: Final = "https://scoreboard.dev/schemas/"

COMMAND_TYPE: Final = "scoreboard.score.command.v1"
CHANGED_TYPE: Final = "scoreboard.score.changed.v1"
FLAGGED_TYPE: Final = "scoreboard.player.flagged.v1"
PERIOD_CLOSED_TYPE: Final = "scoreboard.period.closed.v1"
USER_REMOVED_TYPE: Final = "scoreboard.user.removed.v1"
USER_RESTORED_TYPE: Final = "scoreboard.user.restored.v1"

MAX_POINTS: Final = 1_000_000
"""The most one action may be worth (a command's points, so a change's delta)."""
MAX_SAFE_INTEGER: Final = 2**53 - 1
"""The largest count our readers hold exactly: every integer up to it is exact as a double,
which Redis sorted-set scores, Lua numbers and JavaScript numbers are (see
:func:`out_of_range`)."""

ActionType = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Username = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{3,32}$")]
# A leaderboard's id and one of its time windows (common.boards defines them).
BoardId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
BoardWindow = Literal["all-time", "daily", "weekly", "monthly", "season"]


class Topics:
    """Topic names, with the deployment's prefix applied (empty in production)."""

    COMMANDS = "scoreboard.score-commands.v1"
    CHANGED = "scoreboard.score-changed.v1"
    DLQ = "scoreboard.score-commands.dlq.v1"
    FLAGGED = "scoreboard.player-flagged.v1"
    PERIOD_CLOSED = "scoreboard.period-closed.v1"
    REMOVALS = "scoreboard.user-removals.v1"

    def __init__(self, prefix: str = "") -> None:
        self.commands = prefix + self.COMMANDS
        self.changed = prefix + self.CHANGED
        self.dlq = prefix + self.DLQ
        self.flagged = prefix + self.FLAGGED
        self.period_closed = prefix + self.PERIOD_CLOSED
        self.removals = prefix + self.REMOVALS


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def _published_before(schema: dict[str, Any]) -> None:
    # dataschema is always written but came late: records from before it lack it.
    schema["required"] = [name for name in schema["required"] if name != "dataschema"]


class ScoreCommand(_Message):
    """Raise ``user_id``'s score by ``points`` for the completed action ``action_id``."""

    action_id: uuid.UUID
    user_id: uuid.UUID
    action_type: ActionType
    points: int = Field(gt=0, le=MAX_POINTS)
    issued_at: AwareDatetime
    accepted_at: AwareDatetime


class BoardChange(_Message):
    """The player's total in one period of a board's window after the change (common.boards).

    The entry's version is the change's ``version``; it was reached at ``occurred_at``.
    """

    board: BoardId
    window: BoardWindow
    period: str = Field(min_length=1, max_length=32)
    score: int = Field(ge=0)
    entries: int = Field(ge=1)


class ScoreChanged(_Message):
    """``user_id``'s score became ``score``; ``version`` is the user's own sequence number.

    ``boards`` lists the board periods the action counted in besides the default board's
    all-time window (which ``score`` is); empty when it counted nowhere else.
    """

    action_id: uuid.UUID
    user_id: uuid.UUID
    username: Username
    delta: int = Field(gt=0)
    score: int = Field(ge=0)
    version: int = Field(ge=1)
    occurred_at: AwareDatetime
    boards: tuple[BoardChange, ...] = ()


def out_of_range(change: ScoreChanged) -> str | None:
    """The first number in ``change`` that no honest score service writes and our readers cannot
    hold (a delta over :data:`MAX_POINTS`, a count over :data:`MAX_SAFE_INTEGER`); None if none.

    The v1 schema leaves these unbounded (tightening it would be a v2, docs/events.md), so the
    readers check: past 2**53 the board's Lua apply loses precision (a version step, the board
    version), a score beyond a double's range makes ZADD fail, which would stop the board's
    consumer, and a delta beyond a float's range stops the anomaly model's arithmetic.
    """
    if change.delta > MAX_POINTS:
        return "delta"
    for name in ("score", "version"):
        if getattr(change, name) > MAX_SAFE_INTEGER:
            return name
    for i, entry in enumerate(change.boards):
        for name in ("score", "entries"):
            if getattr(entry, name) > MAX_SAFE_INTEGER:
                return f"boards.{i}.{name}"
    return None


class _Envelope(_Message):
    # The attributes with a default are always written, so the schema requires them.
    model_config = ConfigDict(
        json_schema_serialization_defaults_required=True, json_schema_extra=_published_before
    )

    specversion: Literal["1.0"] = SPEC_VERSION
    id: str = Field(
        min_length=1,
        max_length=128,
        description="Unique per source; a resend of the same event has the same id.",
    )
    source: str = Field(
        min_length=1,
        max_length=256,
        json_schema_extra={"format": "uri-reference"},
        description=(
            "The publishing service, an absolute URI https://scoreboard.dev/services/<service>"
            " (events published before it was absolute have a relative /<service>)."
        ),
    )
    time: AwareDatetime
    subject: str = Field(min_length=1, max_length=128, description="The user id.")
    datacontenttype: Literal["application/json"] = CONTENT_TYPE


class ScoreCommandEvent(_Envelope):
    """CloudEvent on ``scoreboard.score-commands.v1``; ``id`` is the action id."""

    type: Literal["scoreboard.score.command.v1"] = COMMAND_TYPE
    dataschema: Literal[
        "https://scoreboard.dev/schemas/score-command.v1.json#/$defs/ScoreCommand"
    ] = "https://scoreboard.dev/schemas/score-command.v1.json#/$defs/ScoreCommand"
    data: ScoreCommand

    @classmethod
    def wrap(cls, data: ScoreCommand, source: str) -> Self:
        """Envelope a command; the event id is the action id, so duplicates are recognisable."""
        return cls(
            id=str(data.action_id),
            source=source,
            time=data.accepted_at,
            subject=str(data.user_id),
            data=data,
        )


class ScoreChangedEvent(_Envelope):
    """CloudEvent on ``scoreboard.score-changed.v1``; ``id`` is ``<user_id>:<version>``."""

    type: Literal["scoreboard.score.changed.v1"] = CHANGED_TYPE
    dataschema: Literal[
        "https://scoreboard.dev/schemas/score-changed.v1.json#/$defs/ScoreChanged"
    ] = "https://scoreboard.dev/schemas/score-changed.v1.json#/$defs/ScoreChanged"
    data: ScoreChanged

    @classmethod
    def wrap(cls, data: ScoreChanged, source: str) -> Self:
        """Envelope a change; the id is stable per (user, version), so a resend is a duplicate."""
        return cls(
            id=cls.event_id(data.user_id, data.version),
            source=source,
            time=data.occurred_at,
            subject=str(data.user_id),
            data=data,
        )

    @staticmethod
    def event_id(user_id: uuid.UUID | str, version: int) -> str:
        """``<user_id>:<version>``: the id of the change that gave the user that version."""
        return f"{user_id}:{version}"


class PlayerFlagged(_Message):
    """``user_id`` earns far faster than the players active beside them (score/anomaly.py).

    A flag is a suspicion for an operator to review, not a verdict: nothing is taken from the
    player until the flag is confirmed (``auth confirm-flag``, which bans). The figures are those
    of the evaluation that raised it: ``rate`` is the player's exponentially weighted points per
    second (time constant ``tau_s``), ``median`` and ``mad`` (median absolute deviation) are the
    population's over ``active_players``, and ``z`` = (rate - median) / (1.4826 * max(mad, floor)).
    """

    flag_id: uuid.UUID
    user_id: uuid.UUID
    username: Username
    reason: Literal["earning_rate"] = "earning_rate"
    rate: float = Field(ge=0)
    z: float
    median: float = Field(ge=0)
    mad: float = Field(ge=0)
    active_players: int = Field(ge=1)
    tau_s: float = Field(gt=0)
    flagged_at: AwareDatetime


class PlayerFlaggedEvent(_Envelope):
    """CloudEvent on ``scoreboard.player-flagged.v1``; ``id`` is the flag id (a resend of the same
    flag, possible after a publisher failure, has the same id)."""

    type: Literal["scoreboard.player.flagged.v1"] = FLAGGED_TYPE
    dataschema: Literal[
        "https://scoreboard.dev/schemas/player-flagged.v1.json#/$defs/PlayerFlagged"
    ] = "https://scoreboard.dev/schemas/player-flagged.v1.json#/$defs/PlayerFlagged"
    data: PlayerFlagged

    @classmethod
    def wrap(cls, data: PlayerFlagged, source: str) -> Self:
        """Envelope a flag; the event id is the flag id."""
        return cls(
            id=str(data.flag_id),
            source=source,
            time=data.flagged_at,
            subject=str(data.user_id),
            data=data,
        )


class FinalStanding(_Message):
    """One player's place in a closed period (ties: whoever reached the score first ranks
    higher, as on the live board)."""

    rank: int = Field(ge=1)
    user_id: uuid.UUID
    username: Username
    score: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    entries: int = Field(ge=1, le=MAX_SAFE_INTEGER)
    reached_at: AwareDatetime


class PeriodClosed(_Message):
    """The final standings of one closed period of a board's window (common.boards).

    Published once per period, after its end plus the grace for late commands
    (``period_close_grace_s``; docs/architecture.md, "Closing a period"). ``standings`` are the
    top ``top_n`` players (the board's ``closed_top_n``), banned players left out; ``players``
    and ``entries`` count everyone in the period, banned players aside. What the score service
    applies for the period after it closed still counts in its totals (``GET
    /api/boards/{board}/{window}/top?period=``) but is not announced again.
    """

    board: BoardId
    window: BoardWindow
    period: str = Field(min_length=1, max_length=32)
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    closed_at: AwareDatetime
    top_n: int = Field(ge=1, le=1000)
    players: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    entries: int = Field(ge=0, le=MAX_SAFE_INTEGER)
    standings: tuple[FinalStanding, ...] = Field(max_length=1000)


class PeriodClosedEvent(_Envelope):
    """CloudEvent on ``scoreboard.period-closed.v1``, keyed by board id; ``id`` is
    ``<board>:<window>:<period>`` (one event per period, ever)."""

    type: Literal["scoreboard.period.closed.v1"] = PERIOD_CLOSED_TYPE
    dataschema: Literal[
        "https://scoreboard.dev/schemas/period-closed.v1.json#/$defs/PeriodClosed"
    ] = "https://scoreboard.dev/schemas/period-closed.v1.json#/$defs/PeriodClosed"
    subject: str = Field(
        min_length=1, max_length=128, description="The board period: <board>/<window>/<period>."
    )
    data: PeriodClosed

    @classmethod
    def wrap(cls, data: PeriodClosed, source: str) -> Self:
        """Envelope a closed period; its id names the period, so a duplicate is recognisable."""
        return cls(
            id=f"{data.board}:{data.window}:{data.period}",
            source=source,
            time=data.closed_at,
            subject=f"{data.board}/{data.window}/{data.period}",
            data=data,
        )


class UserRemoved(_Message):
    """``user_id`` is off every board and window: ``banned`` (until a UserRestored) or
    ``deleted`` (for good).

    ``seq`` is the entry's place in the moderation log (common.moderation): it orders removals
    and restorations across users; per user they also arrive in order (keyed by user id).
    """

    user_id: uuid.UUID
    reason: Literal["banned", "deleted"]
    seq: int = Field(ge=1, le=MAX_SAFE_INTEGER)
    at: AwareDatetime


class UserRestored(_Message):
    """``user_id``'s ban was lifted: their entries are on the boards again, as they were."""

    user_id: uuid.UUID
    reason: Literal["unbanned"] = "unbanned"
    seq: int = Field(ge=1, le=MAX_SAFE_INTEGER)
    at: AwareDatetime


class UserRemovedEvent(_Envelope):
    """CloudEvent on ``scoreboard.user-removals.v1``; ``id`` is ``moderation:<seq>``."""

    type: Literal["scoreboard.user.removed.v1"] = USER_REMOVED_TYPE
    dataschema: Literal[
        "https://scoreboard.dev/schemas/user-removed.v1.json#/$defs/UserRemoved"
    ] = "https://scoreboard.dev/schemas/user-removed.v1.json#/$defs/UserRemoved"
    data: UserRemoved

    @classmethod
    def wrap(cls, data: UserRemoved, source: str) -> Self:
        """Envelope a removal; the id names its moderation log entry."""
        return cls(
            id=f"moderation:{data.seq}",
            source=source,
            time=data.at,
            subject=str(data.user_id),
            data=data,
        )


class UserRestoredEvent(_Envelope):
    """CloudEvent on ``scoreboard.user-removals.v1``; ``id`` is ``moderation:<seq>``."""

    type: Literal["scoreboard.user.restored.v1"] = USER_RESTORED_TYPE
    dataschema: Literal[
        "https://scoreboard.dev/schemas/user-restored.v1.json#/$defs/UserRestored"
    ] = "https://scoreboard.dev/schemas/user-restored.v1.json#/$defs/UserRestored"
    data: UserRestored

    @classmethod
    def wrap(cls, data: UserRestored, source: str) -> Self:
        """Envelope a restoration; the id names its moderation log entry."""
        return cls(
            id=f"moderation:{data.seq}",
            source=source,
            time=data.at,
            subject=str(data.user_id),
            data=data,
        )


class AppliedNotice(BaseModel):
    """Redis channel ``P applied`` (:func:`common.keyspace.applied_channel`): ``action_id`` is on
    the board. Published by the broadcaster for each applied change; the gateway answers a
    ``Prefer: wait`` request with it. Not a Kafka message and not a CloudEvent: an internal
    notice between two services, documented as a contract all the same.

    ``rank`` is 1-based on the all-time board; ``version`` is the user's (as in ScoreChanged).
    Fields may be added: readers ignore what they do not know.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    action_id: uuid.UUID
    user_id: uuid.UUID
    username: Username
    score: int = Field(ge=0)
    version: int = Field(ge=1)
    rank: int = Field(ge=1)


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


def encode(event: BaseModel) -> bytes:
    """Serialise a message for Kafka (compact JSON, UTF-8)."""
    return event.model_dump_json().encode()


SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "score-command.v1": ScoreCommandEvent,
    "score-changed.v1": ScoreChangedEvent,
    "applied-notice.v1": AppliedNotice,
    "player-flagged.v1": PlayerFlaggedEvent,
    "period-closed.v1": PeriodClosedEvent,
    "user-removed.v1": UserRemovedEvent,
    "user-restored.v1": UserRestoredEvent,
}
