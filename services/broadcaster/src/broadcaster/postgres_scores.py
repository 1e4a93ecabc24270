"""PostgreSQL's score rows: the truth the board is rebuilt from and falls back to.

Rows of ``scores`` JOIN ``users``. The score service owns these tables; the broadcaster only
reads them. Only rows with ``version > 0`` (players who have scored) are on the board, in both
stores.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime

import asyncpg

from broadcaster.standings import Entry, Removal, ScoreRow, Standing, TopSnapshot

# Both in the order of scores_rank_idx: score DESC, reached_at ASC, user_id ASC.
_ROWS = """
    SELECT s.user_id, u.username, s.score, s.version, s.reached_at, h.held_score
    FROM scores s JOIN users u USING (user_id) LEFT JOIN board_holds h USING (user_id)
    WHERE s.version > 0
    ORDER BY s.score DESC, s.reached_at ASC, s.user_id ASC
"""

# Held players (shadow quarantine, broadcaster.holds) show at most their held score, so they can
# only move down: the public top $1 is among the real top $1 + (players held).
_TOP = """
    WITH top AS (
        SELECT s.user_id, u.username, least(s.score, h.held_score) AS score, s.reached_at
        FROM scores s JOIN users u USING (user_id) LEFT JOIN board_holds h USING (user_id)
        WHERE s.version > 0 AND NOT u.banned
        ORDER BY s.score DESC, s.reached_at ASC, s.user_id ASC
        LIMIT $1 + (SELECT count(*) FROM board_holds)
    )
    SELECT user_id, username, score FROM top
    ORDER BY score DESC, reached_at ASC, user_id ASC
    LIMIT $1
"""

# The board version is the sum of the users' versions, removed users' included, each of those
# plus one for the removal (see broadcaster.redis_board and common.removals), plus one for each
# hold and release (broadcaster.holds).
_VERSION = """
    SELECT (SELECT coalesce(sum(version), 0) FROM scores WHERE version > 0)
         + (SELECT coalesce(sum(version + 1), 0) FROM removed_users)
         + (SELECT count(*) FROM moderation_events WHERE action <> 'deleted')
         + (SELECT coalesce(sum(steps), 0) FROM board_hold_steps)
"""

_HOLDS = "SELECT user_id, held_score FROM board_holds"
_HOLD_STEPS = "SELECT coalesce(sum(steps), 0) FROM board_hold_steps"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Removals recorded at or after $1, oldest first.
_REMOVALS = """
    SELECT user_id, version, removed_at FROM removed_users
    WHERE removed_at >= $1
    ORDER BY removed_at, user_id
"""

_USER = """
    SELECT u.user_id, u.username, s.score, s.version, s.reached_at
    FROM users u LEFT JOIN scores s USING (user_id)
    WHERE u.user_id = $1 AND NOT u.banned
"""

# Players ahead of ($2 score, $3 reached_at, $1 user_id) in the board's order.
_AHEAD = """
    SELECT count(*) FROM scores
    WHERE version > 0 AND user_id NOT IN (SELECT user_id FROM users WHERE banned)
      AND (score > $2
           OR (score = $2 AND (reached_at < $3 OR (reached_at = $3 AND user_id < $1))))
"""


class PostgresScores:
    """Reads of the board's order straight from PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def top(self, limit: int) -> TopSnapshot:
        """The first ``limit`` players and the board version, from one consistent snapshot."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            rows = await conn.fetch(_TOP, limit)
            version = await conn.fetchval(_VERSION)
        entries = tuple(
            Entry(i, str(r["user_id"]), r["username"], int(r["score"]))
            for i, r in enumerate(rows, start=1)
        )
        return TopSnapshot(version=int(version), entries=entries)

    async def standing(self, user_id: uuid.UUID) -> Standing | None:
        """A player's score and rank (None if no such user; rank None if they never scored)."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            row = await conn.fetchrow(_USER, user_id)
            if row is None:
                return None
            if not row["version"]:
                return Standing(str(user_id), row["username"], 0, None)
            ahead = await conn.fetchval(_AHEAD, user_id, row["score"], row["reached_at"])
        return Standing(str(user_id), row["username"], int(row["score"]), int(ahead) + 1)

    async def holds(self) -> dict[uuid.UUID, int]:
        """The players the board holds (shadow quarantine) and the most it shows of each."""
        return {r[0]: int(r[1]) for r in await self._pool.fetch(_HOLDS)}

    async def hold_steps(self) -> int:
        """How many holds and releases the board version counts (board_hold_steps)."""
        return int(await self._pool.fetchval(_HOLD_STEPS))

    async def removals(self, since: datetime | None = None) -> list[Removal]:
        """The users removed from the board at or after ``since`` (None: all), oldest first."""
        rows = await self._pool.fetch(_REMOVALS, since or _EPOCH)
        return [Removal(r["user_id"], int(r["version"]), r["removed_at"]) for r in rows]

    async def rows(self, batch: int) -> AsyncGenerator[list[ScoreRow], None]:
        """Every scored player in board order, ``batch`` rows at a time, from one snapshot."""
        async with (
            self._pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            chunk: list[ScoreRow] = []
            async for r in conn.cursor(_ROWS, prefetch=batch):
                chunk.append(
                    ScoreRow(
                        user_id=r["user_id"],
                        username=r["username"],
                        score=int(r["score"]),
                        version=int(r["version"]),
                        reached_at=r["reached_at"],
                        held=None if r["held_score"] is None else int(r["held_score"]),
                    )
                )
                if len(chunk) >= batch:
                    yield chunk
                    chunk = []
            if chunk:
                yield chunk
