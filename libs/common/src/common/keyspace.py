"""Every Redis key, channel and stored value that two services share, in one place.

``P`` is the deployment's ``SCOREBOARD_REDIS_PREFIX`` (``sb:``; it holds no braces, so the hash
tags below are the keys' only ones). Who writes and who reads:

- ``P ticket:{<action_id>}``: the ticket, JSON. The gateway writes it (issue) and reads it
  (redeem); the broadcaster deletes it once the action is applied.
- ``P done:{<action_id>}``: the redemption marker, :data:`DONE_CLAIMED` ``<ms>:<gateway>``,
  :data:`DONE_PUBLISHED` ``<ms>`` or :data:`DONE_APPLIED`. The gateway claims and marks
  published; the broadcaster marks applied. The braces are a Redis Cluster hash tag: an
  action's ticket and marker share one slot, so one command or script may touch both.
- ``P revoked-session:{sid}``: :data:`SESSION_REVOKED`, TTL = the access-token lifetime. Auth
  writes, the gateway reads.
- ``P user-status:{user_id}``: :data:`USER_BANNED` or :data:`USER_DELETED`, no TTL. Auth
  writes, the gateway reads.
- ``P applied`` (channel): :class:`common.events.AppliedNotice` JSON. The broadcaster
  publishes (once the action's marker is applied), the gateway listens while ``Prefer: wait``
  requests wait.
- ``P {bd:<board>:<window>:<period>}:*``: one period of a board's window, written and read by
  the broadcaster replicas. The braces are a Redis Cluster hash tag: a period's keys share one
  slot, so its scripts run on one node, and different periods spread over the cluster. The
  default board's all-time window (``{bd:global:all-time:all}``) has more keys than the others
  (:class:`BoardKeys`); every other period has :class:`PeriodBoardKeys`.

The done marker is an action's redemption, a small state machine (docs/architecture.md):

- claimed, ``c:<ms>:<gateway>``: the gateway that claimed it at that time (Unix ms) is publishing
  the command. A retry that finds a claim waits for it; a claim still unpublished after the
  gateway's ``claim_stale_after_s`` (a little more than the publish timeout: its gateway died, or
  Kafka never answered it) is taken over by the retry, which publishes the command itself. A
  double publish is harmless: the score service applies an action id at most once.
- published, ``p:<ms>``: Kafka acknowledged the command (acks=all), so it will be applied.
- applied, ``1``: the broadcaster has seen the resulting ScoreChanged (whatever the state was:
  also after a claim released because its publish timed out yet reached Kafka).

A retry is answered 409 only once the action is published or applied: a 409 means recorded.
A claim is released (the key deleted) when Kafka refuses the command, so the client's retry of
the same request starts afresh.

Lua scripts never spell these names or values: they get the keys as ``KEYS`` and the values
through :func:`lua`, which fills ``@NAME`` placeholders from this module's constants.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from string import Template
from typing import Final

from common.boards import ALL_TIME, ALL_TIME_PERIOD, DEFAULT_BOARD

# The done marker's states (see the module docstring).
DONE_CLAIMED: Final = "c:"
DONE_PUBLISHED: Final = "p:"
DONE_APPLIED: Final = "1"
# How long an "applied" marker the broadcaster creates lives (the gateway's done_ttl_s default).
APPLIED_TTL_S: Final = 7 * 24 * 3600

# A user's status as auth records it for the gateways; absent when in good standing.
USER_BANNED: Final = "banned"
USER_DELETED: Final = "deleted"
SESSION_REVOKED: Final = "1"


def ticket_key(prefix: str, action_id: uuid.UUID | str) -> str:
    """The key of an action's ticket (in the slot of its :func:`done_key`)."""
    return f"{prefix}ticket:{{{action_id}}}"


def done_key(prefix: str, action_id: uuid.UUID | str) -> str:
    """The key of an action's redemption marker (in the slot of its :func:`ticket_key`)."""
    return f"{prefix}done:{{{action_id}}}"


def period_tag(prefix: str, board: str, window: str, period: str) -> str:
    """The common start of one board period's keys: ``P {bd:<board>:<window>:<period>}``, its
    Redis Cluster hash tag (ids from common.boards, which have no braces)."""
    return f"{prefix}{{bd:{board}:{window}:{period}}}"


def revoked_session_key(prefix: str, session_id: uuid.UUID | str) -> str:
    """The key marking a login session revoked."""
    return f"{prefix}revoked-session:{session_id}"


def user_status_key(prefix: str, user_id: uuid.UUID | str) -> str:
    """The key holding a user's status (absent when in good standing)."""
    return f"{prefix}user-status:{user_id}"


def applied_channel(prefix: str) -> str:
    """The channel on which the broadcaster announces each applied action."""
    return f"{prefix}applied"


@dataclass(frozen=True)
class BoardKeys:
    """The main board's Redis names: the default board's all-time window (broadcaster.board
    documents them), all under its period's hash tag ``P {bd:global:all-time:all}``.

    - ``rank``: sorted set of members by points; ``users``: hash user id -> entry;
      ``version``: the board version; ``built``: a rebuild finished; ``lock``: the one
      replica that rebuilds holds it; ``removed``: deleted users' ids (tombstones);
      ``held``: hash user id -> ``"<held>|<real>"`` for players in shadow quarantine
      (broadcaster.holds); ``hold_steps``: how many holds and releases the board version
      counts; ``hidden``: hash user id -> the version a banned player had when they left the
      board; ``moderation``: hash, ``seq`` = the last moderation log entry the board applied
      (broadcaster.moderation; missing: not synced yet).
    - ``applied``: the :func:`applied_channel` (a channel, not a key: scripts get it in ARGV).

    Before the hash tag these were ``P board:*``: a broadcaster of this version finds no
    ``built`` marker under the new names and rebuilds the board from PostgreSQL.
    """

    rank: str
    users: str
    version: str
    built: str
    lock: str
    applied: str
    removed: str
    held: str
    hold_steps: str
    hidden: str
    moderation: str

    @classmethod
    def for_prefix(cls, prefix: str) -> BoardKeys:
        """Keys under ``prefix`` (``settings.redis_prefix``)."""
        tag = period_tag(prefix, DEFAULT_BOARD, ALL_TIME, ALL_TIME_PERIOD)
        return cls(
            rank=f"{tag}:rank",
            users=f"{tag}:users",
            version=f"{tag}:version",
            built=f"{tag}:built",
            lock=f"{tag}:rebuild-lock",
            applied=applied_channel(prefix),
            removed=f"{tag}:removed",
            held=f"{tag}:held",
            hold_steps=f"{tag}:hold-steps",
            hidden=f"{tag}:hidden",
            moderation=f"{tag}:moderation",
        )

    @property
    def board(self) -> list[str]:
        """The keys that hold the board itself (what a rebuild recreates), all in one slot."""
        return [
            self.rank, self.users, self.version, self.built, self.removed, self.held,
            self.hold_steps, self.hidden, self.moderation,
        ]  # fmt: skip


@dataclass(frozen=True)
class PeriodBoardKeys:
    """The Redis names of one period of a board's window (broadcaster.period_boards).

    ``rank``, ``users``, ``version``, ``built`` and ``lock`` as in :class:`BoardKeys`; all under
    one hash tag. The default board's all-time window is :class:`BoardKeys` (see
    :meth:`of_board`), whose reads share the scripts: :meth:`for_period` names the same keys
    for it, but its entries are the main board's, so use :meth:`of_board` there.
    """

    rank: str
    users: str
    version: str
    built: str
    lock: str
    legacy: bool = False

    @classmethod
    def for_period(cls, prefix: str, board: str, window: str, period: str) -> PeriodBoardKeys:
        """Keys of ``period`` of ``board``'s ``window`` (ids from common.boards, no braces)."""
        tag = period_tag(prefix, board, window, period)
        return cls(
            rank=f"{tag}:rank",
            users=f"{tag}:users",
            version=f"{tag}:version",
            built=f"{tag}:built",
            lock=f"{tag}:rebuild-lock",
        )

    @classmethod
    def of_board(cls, keys: BoardKeys) -> PeriodBoardKeys:
        """The default board's all-time window, which is the board of :class:`BoardKeys`."""
        return cls(keys.rank, keys.users, keys.version, keys.built, keys.lock, legacy=True)

    @property
    def board(self) -> list[str]:
        """The keys a rebuild recreates (and that expire together)."""
        return [self.rank, self.users, self.version, self.built]


_LUA_VALUES: Final = {
    "DONE_CLAIMED": DONE_CLAIMED,
    "DONE_PUBLISHED": DONE_PUBLISHED,
    "DONE_APPLIED": DONE_APPLIED,
    "USER_BANNED": USER_BANNED,
    "USER_DELETED": USER_DELETED,
}


class _LuaTemplate(Template):
    delimiter = "@"  # Lua patterns use "$" (an anchor); "@" means nothing in Lua


def lua(source: str) -> str:
    """``source`` with each ``@NAME`` replaced by that shared value as a Lua string literal.

    A JSON string is a valid Lua string literal for these plain ASCII values.
    """
    return _LuaTemplate(source).substitute({k: json.dumps(v) for k, v in _LUA_VALUES.items()})
