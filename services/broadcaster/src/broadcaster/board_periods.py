"""Boards and their periods for the broadcaster: the catalog, the reads, the Redis rebuilds.

Reads of a period go to Redis while Redis keeps it (the current period and
``redis_past_periods`` past ones, common.boards), else to PostgreSQL, which keeps every period.
A period Redis should have but has not built (its first entry of a new period, a flush, an
expiry) is rebuilt from PostgreSQL by one replica under the period's lock while reads fall back
to PostgreSQL; the consumer waits for that rebuild and applies its entries after it, so nothing
committed falls between the snapshot and the events (the same rule as broadcaster.rebuild).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

import asyncpg
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from broadcaster.period_boards import PeriodBoards, PeriodEntry, Ranked, Slice
from broadcaster.postgres_boards import Position, PostgresBoards
from broadcaster.rebuild import Rebuilder
from broadcaster.settings import Settings
from broadcaster.standings import member_for, reached_at_of_member, user_of_member
from common.boards import (
    ALL_TIME,
    DEFAULT_BOARD,
    WINDOWS,
    Board,
    Catalog,
    InvalidPeriod,
    Period,
    Window,
    load_catalog,
)
from common.events import ScoreChanged, utcnow
from common.keyspace import BoardKeys, PeriodBoardKeys
from common.problems import BadRequest, NotFound, ServiceUnavailable

log = structlog.get_logger(__name__)
T = TypeVar("T")

_POSTGRES_DOWN = (OSError, asyncio.TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


class UnknownBoard(NotFound):
    """No active board with this id."""

    title = "Unknown Board"


class UnknownWindow(BadRequest):
    """Not one of the windows a board can have."""

    def __init__(self, raw: str) -> None:
        super().__init__(f"window must be one of {', '.join(WINDOWS)}, not {raw[:40]!r}")


class WindowNotOnBoard(NotFound):
    """The board does not have this window."""

    title = "Unknown Board"


class BadPeriod(BadRequest):
    """A ``period`` that is not one of the window's."""


class NoCurrentPeriod(NotFound):
    """A season window between two seasons, asked for its current period."""

    title = "No Current Period"


class BoardsUnavailable(ServiceUnavailable):
    """The board definitions cannot be read (PostgreSQL down since this replica started)."""

    def __init__(self) -> None:
        super().__init__("the boards cannot be read right now; try again shortly")


@dataclass(frozen=True, slots=True)
class Target:
    """One period of one board's window, resolved from a request or an event."""

    board: Board
    window: Window
    period: Period
    keys: PeriodBoardKeys
    in_redis: bool  # Redis keeps this period (else PostgreSQL alone answers)

    @property
    def ids(self) -> tuple[str, str, str]:
        """(board id, window, period id): the row key of board_entries."""
        return (self.board.id, self.window, self.period.id)

    @property
    def redis_until(self) -> datetime | None:
        """When this period's Redis keys expire (None: never)."""
        return self.period.redis_until(self.board.definition.redis_past_periods)


class BoardPeriods:
    """The catalog (cached), period reads (Redis, else PostgreSQL) and period rebuilds."""

    def __init__(
        self,
        settings: Settings,
        redis_boards: PeriodBoards,
        postgres: PostgresBoards,
        pool: asyncpg.Pool,
        main_keys: BoardKeys,
        main_rebuilder: Rebuilder,
    ) -> None:
        self._settings = settings
        self._redis = redis_boards
        self._postgres = postgres
        self._pool = pool
        self._main_keys = PeriodBoardKeys.of_board(main_keys)
        self._main_rebuilder = main_rebuilder
        self._catalog: Catalog | None = None
        self._loaded_at = 0.0
        self._loading = asyncio.Lock()
        self._rebuilding: dict[PeriodBoardKeys, asyncio.Task[None]] = {}
        self._rebuild_locks: dict[PeriodBoardKeys, asyncio.Lock] = {}
        self.hidden: set[uuid.UUID] = set()
        """Banned (or deleted) players, whose late events must not put them back on a period
        (broadcaster.moderation keeps it; PostgreSQL's board_entries leaves them out)."""

    # -- the catalog ------------------------------------------------------------------------

    async def catalog(self, *, max_age_s: float = 5.0) -> Catalog:
        """The boards as of at most ``max_age_s`` ago (the last one read if PostgreSQL fails)."""
        loop = asyncio.get_running_loop()
        if self._catalog is not None and loop.time() - self._loaded_at < max_age_s:
            return self._catalog
        async with self._loading:
            if self._catalog is not None and loop.time() - self._loaded_at < max_age_s:
                return self._catalog
            try:
                self._catalog = await load_catalog(self._pool)
                self._loaded_at = loop.time()
            except _POSTGRES_DOWN as exc:
                log.warning("boards_unavailable", error=repr(exc))
                if self._catalog is None:
                    raise BoardsUnavailable() from exc
            return self._catalog

    async def board(self, board_id: str) -> Board:
        """The active board ``board_id`` (re-read once when unknown: it may be new)."""
        board = (await self.catalog()).boards.get(board_id)
        if board is None:
            board = (await self.catalog(max_age_s=1.0)).boards.get(board_id)
        if board is None:
            raise UnknownBoard(f"no board {board_id[:40]!r} (GET /api/boards lists them)")
        return board

    def target(self, board: Board, window: Window, period: Period, now: datetime) -> Target:
        """Where ``period`` of ``board``'s ``window`` lives."""
        if board.id == DEFAULT_BOARD and window == ALL_TIME:
            return Target(board, window, period, self._main_keys, True)
        keys = PeriodBoardKeys.for_period(self._settings.redis_prefix, board.id, window, period.id)
        until = period.redis_until(board.definition.redis_past_periods)
        return Target(board, window, period, keys, until is None or until > now)

    async def resolve(
        self, board_id: str, raw_window: str, raw_period: str | None, now: datetime
    ) -> Target:
        """A request's period: 404 unknown board or window, 400 bad window or period."""
        if raw_window not in WINDOWS:
            raise UnknownWindow(raw_window)
        window: Window = raw_window
        board = await self.board(board_id)
        if window not in board.definition.windows:
            raise WindowNotOnBoard(f"board {board.id!r} has no {window} window")
        if raw_period is None:
            period = board.period_at(window, now)
            if period is None:
                raise NoCurrentPeriod(f"no season of board {board.id!r} is running; ask a period")
        else:
            try:
                period = board.parse_period(window, raw_period)
            except InvalidPeriod as exc:
                raise BadPeriod(str(exc)) from None
        return self.target(board, window, period, now)

    # -- reads ------------------------------------------------------------------------------

    async def page(self, t: Target, limit: int, after: tuple[int, str] | None) -> Slice:
        """``limit`` entries after the cursor position (score, member)."""
        if t.in_redis:
            try:
                found = await self._redis.page(t.keys, limit, after)
            except RedisError as exc:
                log.warning("redis_unavailable", query="board_page", error=repr(exc))
            else:
                if found is not None:
                    return found
                self._request_rebuild(t)
        position = None if after is None else _position(*after)
        return await self._from_postgres(self._postgres.page(t.ids, limit, position))

    async def around(self, t: Target, user_id: uuid.UUID, n: int) -> Slice:
        """The player and ``n`` above and below (``found`` None: not on the board)."""
        if t.in_redis:
            try:
                found = await self._redis.around(t.keys, str(user_id), n)
            except RedisError as exc:
                log.warning("redis_unavailable", query="board_around", error=repr(exc))
            else:
                if found is not None:
                    return found
                self._request_rebuild(t)
        return await self._from_postgres(self._postgres.around(t.ids, user_id, n))

    async def lookup(
        self, t: Target, user_ids: Sequence[uuid.UUID]
    ) -> tuple[int, dict[str, Ranked]]:
        """The player count and the entries of those of ``user_ids`` on the board."""
        if t.in_redis:
            try:
                found = await self._redis.lookup(t.keys, [str(u) for u in user_ids])
            except RedisError as exc:
                log.warning("redis_unavailable", query="board_users", error=repr(exc))
            else:
                if found is not None:
                    return found[1], found[2]
                self._request_rebuild(t)
        return await self._from_postgres(self._postgres.lookup(t.ids, user_ids))

    async def user_exists(self, user_id: uuid.UUID) -> bool:
        """True when there is such a user (PostgreSQL)."""
        return await self._from_postgres(self._postgres.user_exists(user_id))

    @staticmethod
    async def _from_postgres(read: Awaitable[T]) -> T:
        try:
            return await read
        except _POSTGRES_DOWN as exc:
            log.error("postgres_unavailable", query="board", error=repr(exc))
            raise ServiceUnavailable(
                "the board cannot be read right now; try again shortly"
            ) from exc

    # -- writes (the consumer) --------------------------------------------------------------

    async def apply(self, changes: Iterable[ScoreChanged]) -> int:
        """Apply the changes' board entries to the periods Redis keeps; entries applied."""
        now = utcnow()
        groups: dict[PeriodBoardKeys, tuple[Target, list[PeriodEntry]]] = {}
        catalog = await self.catalog()
        for c in changes:
            if c.user_id in self.hidden:
                continue
            member = ""
            for b in c.boards:
                board = catalog.boards.get(b.board)
                if board is None:
                    catalog = await self.catalog(max_age_s=0.0)
                    board = catalog.boards.get(b.board)
                    if board is None:  # retired since: PostgreSQL has the entry
                        continue
                try:
                    period = board.parse_period(b.window, b.period)
                except InvalidPeriod:
                    log.error("invalid_board_period", board=b.board, period=b.period)
                    continue
                t = self.target(board, b.window, period, now)
                if not t.in_redis:
                    continue
                member = member or member_for(c.user_id, c.occurred_at)
                entry = PeriodEntry(
                    str(c.user_id), c.username, b.score, b.entries, c.version, member
                )
                groups.setdefault(t.keys, (t, []))[1].append(entry)
        applied = 0
        items = list(groups.values())
        # Every period in one round trip (a change feeds each window of each of its boards);
        # Redis being away raises from here: the consumer retries the batch.
        firsts = await self._redis.apply_all([(t.keys, e, t.redis_until) for t, e in items])
        for (t, entries), first in zip(items, firsts, strict=True):
            try:
                if isinstance(first, Exception):
                    raise first
                done = first
                if done is None:
                    await self.ensure_built(t)
                    done = await self._redis.apply(t.keys, entries, t.redis_until) or 0
            except (RedisConnectionError, RedisTimeoutError):
                raise  # Redis is away for the main board too: the consumer retries the batch
            except Exception:
                # Anything else (a rebuild PostgreSQL refuses, a script error) must not stop the
                # main board: the period forgets it is built, so reads go to PostgreSQL (the
                # truth) and the next read or event rebuilds it.
                log.exception("board_period_apply_failed", board=t.board.id, period=t.period.id)
                await self._forget(t)
                continue
            applied += done
        return applied

    async def forget_user(self, user_id: uuid.UUID, *, back: bool = False) -> int:
        """Drop every period Redis keeps where ``user_id``'s entry must go (banned, deleted: the
        periods Redis has them in) or come back (``back``, unbanned: the periods PostgreSQL
        has them in), so its next read or event rebuilds it from PostgreSQL; returns how many.
        The default board's all-time window is the main board's (broadcaster.moderation
        changes it in place)."""
        kept = self._kept_periods(await self.catalog(max_age_s=0.0), utcnow())
        if back:
            rows = await self._pool.fetch(
                "SELECT board_id, window_id, period FROM board_scores WHERE user_id = $1",
                user_id,
            )
            theirs = {(r[0], r[1], r[2]) for r in rows}
            chosen = [t for t in kept if t.ids in theirs]
        else:
            chosen = [t for t in kept if await self._redis.has_user(t.keys, str(user_id))]
        for t in chosen:
            await self._redis.drop(t.keys)
        return len(chosen)

    def _kept_periods(self, catalog: Catalog, now: datetime) -> list[Target]:
        """Every period of every board that Redis may keep now (the current one and the last
        ``redis_past_periods``), the main board's aside. Found by stepping back from now:
        board_scores cannot say, as a deleted player's rows are gone with them."""
        found: list[Target] = []
        for board in catalog.boards.values():
            for window in board.definition.windows:
                if board.id == DEFAULT_BOARD and window == ALL_TIME:
                    continue
                if window == "season":
                    periods = [board.parse_period(window, s.id) for s in board.definition.seasons]
                else:
                    periods = []
                    period = board.period_at(window, now)
                    for _ in range(board.definition.redis_past_periods + 1):
                        if period is None:
                            break
                        periods.append(period)
                        if period.starts_at is None:
                            break
                        period = board.period_at(window, period.starts_at - timedelta(seconds=1))
                found.extend(
                    t for p in periods if (t := self.target(board, window, p, now)).in_redis
                )
        return found

    async def _forget(self, t: Target) -> None:
        try:
            await self._redis.forget(t.keys)
        except RedisError as exc:
            log.warning("board_period_forget_failed", board=t.board.id, error=repr(exc))

    # -- rebuilds ---------------------------------------------------------------------------

    def _request_rebuild(self, t: Target) -> None:
        if t.keys.legacy:
            self._main_rebuilder.request()
            return
        task = self._rebuilding.get(t.keys)
        if task is None or task.done():
            self._rebuilding[t.keys] = asyncio.create_task(self._rebuild_quietly(t))

    async def _rebuild_quietly(self, t: Target) -> None:
        try:
            await self.ensure_built(t)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("board_period_rebuild_failed", board=t.board.id, period=t.period.id)
        finally:
            self._rebuilding.pop(t.keys, None)

    async def ensure_built(self, t: Target) -> bool:
        """Build the period in Redis from PostgreSQL unless built; True if this call built it."""
        lock = self._rebuild_locks.setdefault(t.keys, asyncio.Lock())
        async with lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._settings.rebuild_wait_s
            token = uuid.uuid4().hex
            while True:
                if await self._redis.is_built(t.keys):
                    return False
                if await self._redis.acquire_lock(t.keys, token, self._settings.rebuild_lock_ttl_s):
                    try:
                        if await self._redis.is_built(t.keys):
                            return False
                        await self._rebuild(t, token)
                        return True
                    finally:
                        await self._redis.release_lock(t.keys, token)
                if loop.time() > deadline:
                    raise TimeoutError(f"the rebuild lock of {t.ids} stayed taken")
                await asyncio.sleep(0.05)

    async def _rebuild(self, t: Target, token: str) -> None:
        started = time.perf_counter()
        players = 0
        batch = self._settings.rebuild_batch
        ttl = self._settings.rebuild_lock_ttl_s
        async with contextlib.aclosing(self._postgres.rows(t.ids, batch)) as rows:
            async for chunk in rows:
                await self._redis.apply(t.keys, chunk, t.redis_until, require_built=False)
                players += len(chunk)
                # A period of a million players takes longer than the lock's TTL to rebuild:
                # keep it, or another replica starts the same rebuild (harmless, twice the load).
                if not await self._redis.refresh_lock(t.keys, token, ttl):
                    log.warning("board_period_rebuild_lock_lost", board=t.board.id, users=players)
        info = {"at": utcnow().isoformat(), "by": self._settings.replica_id, "users": players}
        await self._redis.mark_built(t.keys, info, t.redis_until)
        log.info(
            "board_period_rebuilt",
            board=t.board.id,
            window=t.window,
            period=t.period.id,
            users=players,
            seconds=round(time.perf_counter() - started, 3),
        )

    async def close(self) -> None:
        """Stop background rebuilds (shutdown)."""
        for task in list(self._rebuilding.values()):
            task.cancel()
        for task in list(self._rebuilding.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _position(score: int, member: str) -> Position:
    """A cursor's (score, member) as PostgreSQL's (score, reached_at, user_id)."""
    return (score, reached_at_of_member(member), user_of_member(member))
