"""Board periods read straight from PostgreSQL: the truth Redis is rebuilt from, the fallback,
and the archive of periods Redis no longer keeps.

Rows of the ``board_entries`` view (migration 0005: ``board_scores``, and ``scores`` as the
default board's all-time window), in the order of ``board_scores_rank_idx``: score DESC,
reached_at ASC, user_id ASC. A position in that order is (score, reached_at, user_id), which is
what a cursor's member encodes (broadcaster.standings.member_for).

A period's player count is the one part of a page that costs a pass over the whole period
(2.3 s for a period of 1,000,000 players on the test machine, where its first 100 rows take
milliseconds), and every read during a rebuild comes here: so each count is kept for
``count_ttl_s`` (1 s) per period, and a page's ``players`` may be that much older than its rows.
"""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from datetime import datetime

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from broadcaster.period_boards import PeriodEntry, Ranked, Slice
from broadcaster.standings import member_for

_PERIOD = "e.board_id = $1 AND e.window_id = $2 AND e.period = $3"
_COLUMNS = "e.user_id, u.username, e.score, e.entries, e.version, e.reached_at"
_ORDER = "ORDER BY e.score DESC, e.reached_at ASC, e.user_id ASC"
# Rows at or before the position ($4 score, $5 reached_at, $6 user_id) in board order.
_AT_OR_BEFORE = (
    "(e.score > $4 OR (e.score = $4 AND (e.reached_at < $5"
    " OR (e.reached_at = $5 AND e.user_id <= $6))))"
)
_BEFORE = (
    "(e.score > $4 OR (e.score = $4 AND (e.reached_at < $5"
    " OR (e.reached_at = $5 AND e.user_id < $6))))"
)

_PLAYERS = f"SELECT count(*) FROM board_entries e WHERE {_PERIOD}"  # noqa: S608 (constants)
_FIRST = f"""
    SELECT {_COLUMNS} FROM board_entries e JOIN users u USING (user_id)
    WHERE {_PERIOD} {_ORDER} LIMIT $4
"""  # noqa: S608
_AFTER = f"""
    SELECT {_COLUMNS} FROM board_entries e JOIN users u USING (user_id)
    WHERE {_PERIOD} AND NOT {_AT_OR_BEFORE} {_ORDER} LIMIT $7
"""  # noqa: S608
_COUNT_AT_OR_BEFORE = f"SELECT count(*) FROM board_entries e WHERE {_PERIOD} AND {_AT_OR_BEFORE}"  # noqa: S608
_COUNT_BEFORE = f"SELECT count(*) FROM board_entries e WHERE {_PERIOD} AND {_BEFORE}"  # noqa: S608
_ABOVE = f"""
    SELECT {_COLUMNS} FROM board_entries e JOIN users u USING (user_id)
    WHERE {_PERIOD} AND {_BEFORE}
    ORDER BY e.score ASC, e.reached_at DESC, e.user_id DESC LIMIT $7
"""  # noqa: S608
_ENTRIES_OF = f"""
    SELECT {_COLUMNS} FROM board_entries e JOIN users u USING (user_id)
    WHERE {_PERIOD} AND e.user_id = ANY($4::uuid[])
"""  # noqa: S608
_ALL = f"""
    SELECT {_COLUMNS} FROM board_entries e JOIN users u USING (user_id)
    WHERE {_PERIOD} {_ORDER}
"""  # noqa: S608


def _entry(r: asyncpg.Record) -> PeriodEntry:
    return PeriodEntry(
        user_id=str(r["user_id"]),
        username=r["username"],
        score=int(r["score"]),
        entries=int(r["entries"]),
        version=int(r["version"]),
        member=member_for(r["user_id"], r["reached_at"]),
    )


def _ranked(rank: int, r: asyncpg.Record) -> Ranked:
    e = _entry(r)
    return Ranked(rank, e.user_id, e.username, e.score, e.entries, e.member)


_COUNTS_KEPT = 1024  # periods whose count is kept

Position = tuple[int, datetime, uuid.UUID]
"""(score, reached_at, user_id): a place in a period's order."""


class PostgresBoards:
    """Reads of board periods from PostgreSQL, each from one consistent snapshot."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        count_ttl_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._pool = pool
        self._count_ttl_s = count_ttl_s
        self._clock = clock
        self._counts: OrderedDict[tuple[str, str, str], tuple[float, int]] = OrderedDict()

    async def _players(self, conn: PoolConnectionProxy, period: tuple[str, str, str]) -> int:
        """The period's player count, as counted at most ``count_ttl_s`` ago."""
        now = self._clock()
        kept = self._counts.get(period)
        if kept is not None and kept[0] > now:
            return kept[1]
        players = int(await conn.fetchval(_PLAYERS, *period))
        self._counts[period] = (now + self._count_ttl_s, players)
        self._counts.move_to_end(period)
        while len(self._counts) > _COUNTS_KEPT:
            self._counts.popitem(last=False)
        return players

    async def page(self, period: tuple[str, str, str], limit: int, after: Position | None) -> Slice:
        """``limit`` entries after ``after`` (None: from the top)."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            players = await self._players(conn, period)
            if after is None:
                rows = await conn.fetch(_FIRST, *period, limit)
                start = 0
            else:
                rows = await conn.fetch(_AFTER, *period, *after, limit)
                start = int(await conn.fetchval(_COUNT_AT_OR_BEFORE, *period, *after))
        entries = tuple(_ranked(start + i + 1, r) for i, r in enumerate(rows))
        return Slice(0, players, entries)

    async def around(self, period: tuple[str, str, str], user_id: uuid.UUID, n: int) -> Slice:
        """The player and ``n`` entries above and below them."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            players = await self._players(conn, period)
            own = await conn.fetchrow(_ENTRIES_OF, *period, [user_id])
            if own is None:
                return Slice(0, players, ())
            at = (own["score"], own["reached_at"], own["user_id"])
            ahead = int(await conn.fetchval(_COUNT_BEFORE, *period, *at))
            above = list(reversed(await conn.fetch(_ABOVE, *period, *at, n)))
            below = await conn.fetch(_AFTER, *period, *at, n)
        rows = [*above, own, *below]
        start = ahead - len(above)
        return Slice(
            0, players, tuple(_ranked(start + i + 1, r) for i, r in enumerate(rows)), ahead + 1
        )

    async def lookup(
        self, period: tuple[str, str, str], user_ids: Sequence[uuid.UUID]
    ) -> tuple[int, dict[str, Ranked]]:
        """The player count and the entries (with ranks) of those of ``user_ids`` on it."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            players = await self._players(conn, period)
            found = {}
            for r in await conn.fetch(_ENTRIES_OF, *period, list(user_ids)):
                at = (r["score"], r["reached_at"], r["user_id"])
                ahead = int(await conn.fetchval(_COUNT_BEFORE, *period, *at))
                found[str(r["user_id"])] = _ranked(ahead + 1, r)
        return players, found

    async def rows(
        self, period: tuple[str, str, str], batch: int
    ) -> AsyncGenerator[list[PeriodEntry], None]:
        """Every entry of the period in board order, ``batch`` at a time, from one snapshot."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            chunk: list[PeriodEntry] = []
            async for r in conn.cursor(_ALL, *period, prefetch=batch):
                chunk.append(_entry(r))
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk

    async def user_exists(self, user_id: uuid.UUID) -> bool:
        """True when there is such a user (on any board or none), not banned (a banned player
        is on no board: broadcaster.moderation)."""
        return bool(
            await self._pool.fetchval(
                "SELECT 1 FROM users WHERE user_id = $1 AND NOT banned", user_id
            )
        )
