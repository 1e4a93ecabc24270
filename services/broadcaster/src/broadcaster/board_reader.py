"""The board's read side for the API and the WebSocket: Redis first, PostgreSQL as the fallback.

Redis cannot answer when it is down (connection refused, timeout) or the board is not built
(flushed, rebuilding). Then the read goes to PostgreSQL, and a rebuild is requested. After a Redis
failure, reads skip Redis for ``redis_retry_after_s`` so a dead Redis does not add its connect
timeout to every request; PostgreSQL's top list is reused for ``fallback_cache_s`` so a Redis
outage does not turn into a PostgreSQL overload.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict

import asyncpg
import structlog
from redis.exceptions import RedisError

from broadcaster.metrics import BroadcasterMetrics
from broadcaster.postgres_scores import PostgresScores
from broadcaster.rebuild import Rebuilder
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from broadcaster.standings import Standing, TopSnapshot
from common.problems import NotFound, ServiceUnavailable

log = structlog.get_logger(__name__)

# The fallback reads this many rows once and serves every limit from them.
_FALLBACK_ROWS = 100


class UnknownPlayer(NotFound):
    """No user with this id."""

    title = "Unknown Player"


class BoardUnavailable(ServiceUnavailable):
    """Neither Redis nor PostgreSQL can answer right now; retrying later is safe."""

    def __init__(self) -> None:
        super().__init__("the scoreboard cannot be read right now; try again shortly")


# What a PostgreSQL outage looks like to asyncpg: refused or reset connections, timeouts,
# server errors (shutting down, too many connections).
_POSTGRES_DOWN = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class BoardReader:
    """Reads of the board (Redis, else PostgreSQL), with hit/miss/fallback accounting."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        scores: PostgresScores,
        rebuilder: Rebuilder,
        metrics: BroadcasterMetrics,
    ) -> None:
        self._settings = settings
        self._board = board
        self._scores = scores
        self._rebuilder = rebuilder
        self._metrics = metrics
        self._skip_redis_until = 0.0
        self._fallback_top: tuple[float, TopSnapshot] | None = None
        self._unknown: OrderedDict[uuid.UUID, float] = OrderedDict()  # id -> forgotten at

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _redis_failed(self, query: str, exc: RedisError) -> None:
        if self._now() >= self._skip_redis_until:
            log.warning("redis_unavailable", query=query, error=repr(exc))
        self._skip_redis_until = self._now() + self._settings.redis_retry_after_s

    async def top(self, limit: int) -> TopSnapshot:
        """The first ``limit`` players and the board version."""
        reason = "redis_unavailable"
        if self._now() >= self._skip_redis_until:
            try:
                snapshot = await self._board.top(limit)
            except RedisError as exc:
                self._redis_failed("top", exc)
            else:
                if snapshot is not None:
                    self._metrics.cache_hits.labels("top").inc()
                    return snapshot
                reason = "not_built"
                self._rebuilder.request()
        self._metrics.cache_misses.labels("top").inc()
        self._metrics.fallbacks.labels("top", reason).inc()
        return await self._top_from_postgres(limit)

    async def _top_from_postgres(self, limit: int) -> TopSnapshot:
        cached = self._fallback_top
        if cached is None or self._now() >= cached[0]:
            try:
                snapshot = await self._scores.top(max(limit, _FALLBACK_ROWS))
            except _POSTGRES_DOWN as exc:
                log.error("postgres_unavailable", query="top", error=repr(exc))
                raise BoardUnavailable() from exc
            cached = (self._now() + self._settings.fallback_cache_s, snapshot)
            self._fallback_top = cached
        snapshot = cached[1]
        return TopSnapshot(version=snapshot.version, entries=snapshot.entries[:limit])

    def _known_unknown(self, user_id: uuid.UUID) -> bool:
        until = self._unknown.get(user_id)
        if until is None:
            return False
        if until > self._now():
            return True
        del self._unknown[user_id]
        return False

    def forget_unknown(self, user_id: uuid.UUID) -> None:
        """``user_id`` is a player again (an unban): no more 404s from the cache."""
        self._unknown.pop(user_id, None)

    def _remember_unknown(self, user_id: uuid.UUID) -> None:
        if self._settings.unknown_cache_size <= 0:
            return
        self._unknown[user_id] = self._now() + self._settings.unknown_cache_s
        self._unknown.move_to_end(user_id)
        while len(self._unknown) > self._settings.unknown_cache_size:
            self._unknown.popitem(last=False)

    async def standing(self, user_id: uuid.UUID, *, own: bool = False) -> Standing:
        """A player's score and rank; :class:`UnknownPlayer` when there is no such user.

        ``own``: as the player sees themselves (a held player's real score; see
        :meth:`RedisBoard.standings`). From PostgreSQL, the real score in either case.
        """
        if self._known_unknown(user_id):
            self._metrics.cache_hits.labels("unknown_user").inc()
            raise UnknownPlayer(f"no player with id {user_id}")
        key = str(user_id)
        reason = "redis_unavailable"
        if self._now() >= self._skip_redis_until:
            try:
                found = await self._board.standings([key], own=own)
            except RedisError as exc:
                self._redis_failed("user", exc)
            else:
                if found is not None and key in found[1]:
                    self._metrics.cache_hits.labels("user").inc()
                    return found[1][key]
                # Not on a built board: an unknown user or one who has not scored yet.
                reason = "not_on_board" if found is not None else "not_built"
                if found is None:
                    self._rebuilder.request()
        self._metrics.cache_misses.labels("user").inc()
        self._metrics.fallbacks.labels("user", reason).inc()
        try:
            standing = await self._scores.standing(user_id)
        except _POSTGRES_DOWN as exc:
            log.error("postgres_unavailable", query="user", error=repr(exc))
            raise BoardUnavailable() from exc
        if standing is None:
            self._remember_unknown(user_id)
            raise UnknownPlayer(f"no player with id {user_id}")
        return standing

    async def standings(self, user_ids: list[str]) -> tuple[int, dict[str, Standing]] | None:
        """Board version and the players' own standings (their ``me`` frames); None when Redis
        can't say."""
        if self._now() < self._skip_redis_until:
            return None
        try:
            return await self._board.standings(user_ids, own=True)
        except RedisError as exc:
            self._redis_failed("standings", exc)
            return None
