"""Players' own ``me`` frames: whose standing to look up on a tick, and the frames that stages.

Players (connections whose upgrade carried ``X-Scoreboard-User-Id``) get ``me`` frames when
their own score or rank changes, at most ``me_lookups_per_tick`` players per tick (one Lua call),
round-robin so nobody starves. A player's own new score goes out on the next tick (the consumer
names the users it changed, :meth:`MeLookups.nudge`): what a player did shows within a tick, not
a frame interval. Rank changes alone, which every move of the board causes for many players, are
looked up in rounds ``1 / tick_hz`` apart, so they add at most ``tick_hz`` frames a second to
anyone.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from broadcaster.board_reader import BoardReader, UnknownPlayer
from broadcaster.connections import Connections, MeState
from broadcaster.frames import me_frame
from broadcaster.settings import Settings


class MeLookups:
    """The players queued for a lookup of their standing, and the lookups themselves."""

    def __init__(self, settings: Settings, reader: BoardReader, connections: Connections) -> None:
        self._limit = settings.me_lookups_per_tick
        self._pacing = settings.pacing
        self._reader = reader
        self._connections = connections
        self._queue: dict[str, None] = {}  # an ordered set: round-robin beyond the limit
        self._urgent: set[str] = set()
        self._board_version: int | None = None  # when every player was last queued
        self._rank_rounds = self._pacing.pace()

    @property
    def next_rank_round_at(self) -> float:
        """When the next round of rank-only lookups may run (:mod:`broadcaster.pacing`)."""
        return self._rank_rounds.next_at

    @property
    def queued(self) -> bool:
        """Some player's standing waits to be looked up."""
        return bool(self._queue)

    def nudge(self, user_ids: Iterable[uuid.UUID]) -> None:
        """These users' scores changed: those watching here are looked up on the next tick."""
        players = self._connections.players
        if players:
            for user_id in map(str, user_ids):
                if user_id in players:
                    self._urgent.add(user_id)
                    self._queue.setdefault(user_id)

    def board_moved_to(self, version: int) -> bool:
        """Note the board's version; True when it moved since the last note."""
        moved = version != self._board_version
        self._board_version = version
        return moved

    def queue_everyone(self) -> None:
        """The board moved: any player's rank may have."""
        for user_id in self._connections.players:
            self._queue.setdefault(user_id)

    def forget(self, user_id: str) -> None:
        """The player left (their last connection here closed)."""
        self._queue.pop(user_id, None)

    async def refresh(self, now: float) -> None:
        """Look up the queued players whose standing may be sent now, and stage their frames.

        Players whose own score changed (see :meth:`nudge`) go first, on every tick. The others
        (their rank alone moved) are looked up in rounds paced as top frames are, so rank
        churn sends nobody more than ``tick_hz`` frames a second; a player's own changes are
        bounded by the gateway's rate limits. Staged frames go out with the connections'
        ``dirty`` writes.
        """
        limit = self._limit
        urgent = [u for u in self._urgent if u in self._queue]  # the rest went already
        batch, self._urgent = urgent[:limit], set(urgent[limit:])
        if self._pacing.due(self._rank_rounds, now) and len(batch) < limit:
            self._pacing.sent(self._rank_rounds, now)
            chosen = set(batch)
            for user_id in self._queue:
                if len(batch) >= limit:
                    break
                if user_id not in chosen:
                    batch.append(user_id)
        if not batch:
            return
        for user_id in batch:
            del self._queue[user_id]
        found = await self._reader.standings(batch)
        if found is None:
            return
        version, standings = found
        for user_id in batch:
            standing = standings.get(user_id)
            state: MeState = (standing.score, standing.rank) if standing else (0, None)
            data: bytes | None = None
            for w in self._connections.of_player(user_id):
                if w.me_state != state:
                    data = data or me_frame(version, *state)
                    w.me_state = state
                    w.me_pending = data
                    self._connections.dirty.add(w)

    async def lookup(self, user_id: str, version: int) -> tuple[int, MeState]:
        """A player's standing now, for a new connection's first ``me`` frame.

        Also the version to send it with: the board's, or ``version`` (the top frame's) if newer.
        """
        found = await self._reader.standings([user_id])
        if found is not None:
            version = max(version, found[0])
            standing = found[1].get(user_id)
            return version, (standing.score, standing.rank) if standing else (0, None)
        try:  # Redis cannot say: ask PostgreSQL
            standing = await self._reader.standing(uuid.UUID(user_id))
        except UnknownPlayer:
            return version, (0, None)
        return version, (standing.score, standing.rank)
