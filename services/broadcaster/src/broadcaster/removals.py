"""Deleted users leave the live board as soon as their deletion commits.

The deleting transaction records the removal in PostgreSQL's ``removed_users`` and notifies
``board_removals`` (:mod:`common.removals`). Every replica LISTENs on a connection of its own and
applies what was recorded since its last look to the Redis board (idempotent: a tombstone per
user), so whichever replica is first moves the board and the others find nothing to do. It also
polls every ``removals_poll_s``: a notification missed while the connection was down only
delays a removal. Each look re-reads a margin (``_COMMIT_MARGIN``) before its cursor, because a
removal is stamped with its transaction's start and may commit after a later-stamped one.

While the board is not built nothing is applied and the cursor stays: the rebuild applies every
recorded removal itself (:class:`broadcaster.rebuild.Rebuilder`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta

import structlog

from broadcaster.metrics import BroadcasterMetrics
from broadcaster.postgres_scores import PostgresScores
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common.backoff import Backoff
from common.postgres import follow_channel
from common.removals import REMOVALS_CHANNEL

log = structlog.get_logger(__name__)

_COMMIT_MARGIN = timedelta(seconds=60)


class RemovalWatcher:
    """Applies the removals PostgreSQL records to the Redis board."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        scores: PostgresScores,
        metrics: BroadcasterMetrics,
        on_change: Callable[[Iterable[uuid.UUID]], None] = lambda users: None,
    ) -> None:
        self._settings = settings
        self._board = board
        self._metrics = metrics
        self._scores = scores
        self._on_change = on_change
        self._cursor: datetime | None = None  # nothing read yet: read all

    async def run(self) -> None:
        """Listen and apply until cancelled; failures are logged and retried with backoff."""
        await follow_channel(
            self._settings.postgres_dsn,
            REMOVALS_CHANNEL,
            self.apply_new,
            poll_s=self._settings.removals_poll_s,
            backoff=Backoff(self._settings.retry_base_s, self._settings.retry_cap_s),
            failing="board_removals_failing",
        )

    async def apply_new(self) -> int:
        """Apply the removals recorded since the last look; how many users left the board."""
        since = None if self._cursor is None else self._cursor - _COMMIT_MARGIN
        removals = await self._scores.removals(since)
        if not removals:
            return 0
        removed = await self._board.remove_users(removals)
        if removed is None:  # not built: the rebuild applies them; look again later
            return 0
        newest = removals[-1].removed_at
        self._cursor = newest if self._cursor is None else max(self._cursor, newest)
        if removed:
            self._metrics.users_removed.inc(removed)
            log.info("users_removed_from_board", users=removed)
            self._on_change(())
        return removed
