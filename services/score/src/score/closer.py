"""Closing board periods: a period's final standings go out on ``scoreboard.period-closed.v1``,
exactly once, when no command accepted in it can still arrive.

When a period may close. An action counts in the period of its ``accepted_at`` (common.boards),
and the gateway publishes the command after accepting it: within its publish timeout (5 s), or
a retry takes a stale claim over and publishes it (``claim_stale_after_s``, 6 s, then 5 s
more). So every command of a period is in Kafka by ``ends_at + period_close_grace_s`` (30 s
by default, twice that worst case). The closer then also waits until the score group has
applied everything produced before that instant (score/command_progress.py), so a backlog
(a PostgreSQL outage across midnight, a slow replica) delays the close instead of leaving
commands out of it.

What happens to a later one. A command accepted in the period that is still applied after the
close (a gateway whose send reached Kafka after more than the grace) counts in the period's
totals, as every command does, so ``?period=`` reads include it; it is not in the event, which
is not sent again. The closer counts such entries (``closed_periods.late_entries``, metric
``scoreboard_score_period_late_entries``) for a day after the close, so an operator sees when
a grace is too short.

Exactly once. Closing is one PostgreSQL transaction: insert the period into
``closed_periods`` (its primary key: a second closer, on any replica, inserts nothing and
writes nothing) and its PeriodClosed event into the outbox, which the relay publishes in a
Kafka transaction like every ScoreChanged (score/relay.py). The closer runs only on the replica
that leads the relay, so the rows it writes are published by the same version of the code.

Which periods. Every bounded period of every active board's windows that ended after the board
was created (a new board does not announce the years before it) and after the window's last
closed period; seasons by id, since an operator may add one that already ended. A retired
board closes nothing more. Banned players are left out of the standings.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter

from common.backoff import Backoff, wait_or_stop
from common.boards import ALL_TIME, Board, Period, load_catalog
from common.events import (
    SCORE_SOURCE,
    FinalStanding,
    PeriodClosed,
    PeriodClosedEvent,
    encode,
    utcnow,
)
from score.command_progress import CommandProgress
from score.outbox import PERIOD_CLOSED_STREAM
from score.settings import Settings
from score.store import NOTIFY_CHANNEL

log = structlog.get_logger(__name__)

_CREATED = "SELECT board_id, created_at FROM boards WHERE NOT retired"
_WATERMARKS = """
SELECT board_id, window_id, max(ends_at) AS ends_at FROM closed_periods
WHERE window_id <> 'season' GROUP BY board_id, window_id
"""
_CLOSED_SEASONS = "SELECT board_id, period FROM closed_periods WHERE window_id = 'season'"

# The live board's order: points, then who reached them first, then the user id.
_STANDINGS = """
SELECT b.user_id, u.username, b.score, b.entries, b.reached_at
FROM board_scores b JOIN users u USING (user_id)
WHERE b.board_id = $1 AND b.window_id = $2 AND b.period = $3 AND NOT u.banned
ORDER BY b.score DESC, b.reached_at ASC, b.user_id ASC
LIMIT $4
"""
_TOTALS = """
SELECT count(*) FILTER (WHERE NOT u.banned) AS players,
       coalesce(sum(b.entries) FILTER (WHERE NOT u.banned), 0) AS entries,
       coalesce(sum(b.entries), 0) AS all_entries,
       now() AS now
FROM board_scores b JOIN users u USING (user_id)
WHERE b.board_id = $1 AND b.window_id = $2 AND b.period = $3
"""
_CLAIM = """
INSERT INTO closed_periods
    (board_id, window_id, period, starts_at, ends_at, top_n, players, entries, closed_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT DO NOTHING
RETURNING true
"""
_OUTBOX = """
INSERT INTO outbox (event_key, payload, stream) VALUES ($1, $2, $3)
"""
# Entries applied to a period after it closed (closed_periods.entries counts every entry at
# the close, banned players' too, so bans and unbans do not look like late entries).
_LATE = """
WITH now_totals AS (
    SELECT c.board_id, c.window_id, c.period,
           (SELECT coalesce(sum(b.entries), 0) FROM board_scores b
            WHERE (b.board_id, b.window_id, b.period) = (c.board_id, c.window_id, c.period))
           - c.entries AS late
    FROM closed_periods c WHERE c.closed_at > now() - interval '1 day'
)
UPDATE closed_periods c SET late_entries = t.late
FROM now_totals t
WHERE (c.board_id, c.window_id, c.period) = (t.board_id, t.window_id, t.period)
  AND t.late > c.late_entries
RETURNING c.board_id, c.window_id, c.period, t.late, t.late - c.late_entries AS new
"""


@dataclass(frozen=True)
class CloserMetrics:
    """What the period closer reports."""

    closed: Counter
    late_entries: Counter
    failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> CloserMetrics:
        """Register the metrics on ``registry``."""
        return cls(
            closed=Counter(
                "scoreboard_score_periods_closed",
                "Board periods closed (their PeriodClosed event written to the outbox)",
                registry=registry,
            ),
            late_entries=Counter(
                "scoreboard_score_period_late_entries",
                "Entries applied to a period after it closed (accepted in it, applied after "
                "the grace): counted in its totals, missing from its PeriodClosed event",
                registry=registry,
            ),
            failures=Counter(
                "scoreboard_score_closer_failures",
                "Closer rounds that failed and were retried",
                registry=registry,
            ),
        )


class PeriodCloser:
    """Closes the periods that are due, one transaction each."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: CloserMetrics,
        progress: CommandProgress,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._metrics = metrics
        self._progress = progress
        self._clock = clock
        self._grace = timedelta(seconds=settings.period_close_grace_s)

    async def run(self, stop: asyncio.Event, leading: Callable[[], bool]) -> None:
        """Close what is due every ``period_close_interval_s`` while this replica leads the
        relay, until ``stop`` is set."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while not stop.is_set():
            delay = self._settings.period_close_interval_s
            if leading():
                try:
                    await self.close_due()
                    backoff.reset()
                except Exception as exc:
                    self._metrics.failures.inc()
                    log.warning("period_close_failed", error=repr(exc), attempt=backoff.attempt + 1)
                    delay = backoff.next_delay()
            await wait_or_stop(stop, delay)

    async def close_due(self) -> list[PeriodClosed]:
        """Close every period that is due, oldest first per window; returns what was closed
        here (not what another closer closed meanwhile)."""
        now = self._clock()
        deadline = now - self._grace
        async with self._pool.acquire() as conn:
            catalog = await load_catalog(conn)
            created = {r["board_id"]: r["created_at"] for r in await conn.fetch(_CREATED)}
            marks = {(r[0], r[1]): r[2] for r in await conn.fetch(_WATERMARKS)}
            seasons = {(r[0], r[1]) for r in await conn.fetch(_CLOSED_SEASONS)}
        due: list[tuple[Board, Period]] = []
        for board in catalog.boards.values():
            since = created.get(board.id)
            if since is None:
                continue
            for window in board.definition.windows:
                if window == ALL_TIME:
                    continue
                start = max(since, marks.get((board.id, window), since))
                for period in board.periods_between(window, start, deadline):
                    if window != "season" or (board.id, period.id) not in seasons:
                        due.append((board, period))
        closed: list[PeriodClosed] = []
        caught_up: dict[datetime, bool] = {}
        for board, period in sorted(due, key=lambda d: d[1].ends_at or now):
            assert period.ends_at is not None  # periods_between yields bounded periods only
            settled = period.ends_at + self._grace
            if settled not in caught_up:
                caught_up[settled] = await self._progress.applied_before(settled)
            if not caught_up[settled]:
                log.info("period_close_waits_for_commands", board=board.id, period=period.id)
                break  # later periods wait too: they close in order
            event = await self._close(board, period)
            if event is not None:
                closed.append(event)
        await self._count_late()
        return closed

    async def _close(self, board: Board, period: Period) -> PeriodClosed | None:
        """Close one period: the claim and the outbox row in one transaction."""
        assert period.starts_at is not None
        assert period.ends_at is not None
        top_n = board.definition.closed_top_n
        key = (board.id, period.window, period.id)
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_STANDINGS, *key, top_n)
            totals = await conn.fetchrow(_TOTALS, *key)
            assert totals is not None
            claimed = await conn.fetchval(
                _CLAIM, *key, period.starts_at, period.ends_at, top_n,
                totals["players"], totals["all_entries"], totals["now"],
            )  # fmt: skip
            if not claimed:
                return None  # another closer has it
            data = PeriodClosed(
                board=board.id,
                window=period.window,
                period=period.id,
                starts_at=period.starts_at,
                ends_at=period.ends_at,
                closed_at=totals["now"],
                top_n=top_n,
                players=totals["players"],
                entries=totals["entries"],
                standings=tuple(_standing(rank, r) for rank, r in enumerate(rows, 1)),
            )
            payload = encode(PeriodClosedEvent.wrap(data, source=SCORE_SOURCE))
            await conn.execute(_OUTBOX, board.id.encode(), payload, PERIOD_CLOSED_STREAM)
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        self._metrics.closed.inc()
        log.info(
            "period_closed",
            board=board.id,
            window=period.window,
            period=period.id,
            players=data.players,
            standings=len(data.standings),
        )
        return data

    async def _count_late(self) -> None:
        for r in await self._pool.fetch(_LATE):
            self._metrics.late_entries.inc(r["new"])
            log.warning(
                "period_late_entries",
                board=r["board_id"],
                window=r["window_id"],
                period=r["period"],
                late_entries=r["late"],
                hint="raise SCOREBOARD_PERIOD_CLOSE_GRACE_S if this repeats",
            )


def _standing(rank: int, row: Any) -> FinalStanding:
    user_id: uuid.UUID = row["user_id"]
    return FinalStanding(
        rank=rank,
        user_id=user_id,
        username=row["username"],
        score=row["score"],
        entries=row["entries"],
        reached_at=row["reached_at"],
    )
