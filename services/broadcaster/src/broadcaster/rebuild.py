"""Rebuilding the Redis board from PostgreSQL, by one replica at a time.

Redis is a cache, not the truth. The board is (re)built when it is missing its ``built`` marker
(first start, Redis flushed or restarted without persistence, keys evicted) and when a replica's
consumer group is new (see :mod:`broadcaster.consumer`). A rebuild streams ``scores JOIN users``
in board order (the rank index) from one snapshot and merges it with the same Lua script the
events use, so it can only move users forward: a rebuild racing live events never undoes them,
and events older than the rebuilt rows are ignored afterwards by the version check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable

import structlog

from broadcaster.metrics import BroadcasterMetrics
from broadcaster.postgres_scores import PostgresScores
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common import tasks as background
from common.events import utcnow

log = structlog.get_logger(__name__)


class RebuildTimeout(Exception):
    """Another replica held the rebuild lock for longer than ``rebuild_wait_s``."""


class Rebuilder:
    """Builds the board from PostgreSQL under a Redis lock; one rebuild at a time per process."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        scores: PostgresScores,
        metrics: BroadcasterMetrics,
        before_built: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self._settings = settings
        self._board = board
        self._scores = scores
        self._metrics = metrics
        # Run last, before the marker: the moderation state (broadcaster.moderation).
        self._before_built = before_built
        self._running = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        # When the last rebuild this process completed began reading PostgreSQL (loop time).
        self._last_started: float | None = None
        self._armed = False

    async def ensure_built(self, *, merge_since: float | None = None) -> bool:
        """Rebuild if the board is not built; True if this call rebuilt it.

        With ``merge_since`` (a loop time), also merge when the board is built, unless this
        process completed a rebuild that started at or after that time. When another replica
        holds the lock, wait for it: its rebuild serves us too, unless we need our own merge,
        which then follows theirs.
        """
        async with self._running:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._settings.rebuild_wait_s
            token = uuid.uuid4().hex
            merge = merge_since is not None and (
                self._last_started is None or self._last_started < merge_since
            )
            while True:
                if not merge and await self._board.is_built():
                    return False
                if await self._board.acquire_lock(token, self._settings.rebuild_lock_ttl_s):
                    try:
                        if not merge and await self._board.is_built():
                            return False
                        started = loop.time()
                        await self._rebuild(token)
                        self._last_started = started
                        return True
                    finally:
                        await self._board.release_lock(token)
                if loop.time() > deadline:
                    raise RebuildTimeout("the board rebuild lock stayed taken")
                await asyncio.sleep(0.1)

    def arm(self) -> None:
        """Let :meth:`request` rebuild (the consumer calls it once it started).

        Before that, the starting consumer is about to build the board itself, from a snapshot
        taken after its positions; and without a consumer a board built now would only go
        stale, while reads falling back to PostgreSQL stay current.
        """
        self._armed = True

    def request(self) -> None:
        """Start a rebuild in the background if none is running (reads found the board missing)."""
        if not self._armed:
            return
        if self._background is None or self._background.done():
            self._background = asyncio.create_task(self._rebuild_in_background())

    async def close(self) -> None:
        """Stop a background rebuild (shutdown)."""
        if self._background is not None:
            await background.stop(self._background)

    async def _rebuild_in_background(self) -> None:
        try:
            await self.ensure_built()
        except asyncio.CancelledError:
            raise
        except Exception:
            # The next reader or tick that finds the board missing asks again.
            log.exception("board_rebuild_failed")

    async def _rebuild(self, token: str) -> None:
        started = time.perf_counter()
        users = applied = 0
        ttl = self._settings.rebuild_lock_ttl_s
        # Read before the rows: the holds in their snapshot are merged without steps, so the
        # version counts at most what PostgreSQL does (broadcaster.holds).
        hold_steps = await self._scores.hold_steps()
        async with contextlib.aclosing(self._scores.rows(self._settings.rebuild_batch)) as rows:
            async for batch in rows:
                result = await self._board.merge_rows(batch)
                users += len(batch)
                applied += result.applied
                if not await self._board.refresh_lock(token, ttl):
                    # Harmless (merges are idempotent), but the lock TTL is too short: say so.
                    log.warning("board_rebuild_lock_lost", users_so_far=users)
        # Deleted users: off the board (they may sit in an older snapshot merged by someone
        # else), tombstoned against late events, and counted in the version as PostgreSQL does.
        removals = await self._scores.removals()
        chunk = self._settings.rebuild_batch
        for start in range(0, len(removals), chunk):
            await self._board.remove_users(removals[start : start + chunk], require_built=False)
        await self._board.sync_hold_steps(hold_steps)
        if self._before_built is not None:
            await self._before_built()
        await self._board.mark_built(
            {
                "at": utcnow().isoformat(),
                "by": self._settings.replica_id,
                "users": users,
                "removed_users": len(removals),
            }
        )
        self._metrics.rebuilds.inc()
        log.info(
            "board_rebuilt",
            users=users,
            applied=applied,
            seconds=round(time.perf_counter() - started, 3),
        )
