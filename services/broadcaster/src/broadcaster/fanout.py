"""Fan-out of the board to WebSocket clients: one ticker, one serialisation, no waiting on anyone.

A ticker runs ``tick_hz`` times a second (10), and sooner when the consumer reports applied
changes (:meth:`Fanout.nudge`), though never sending a top frame within ``1 / tick_hz`` of the
previous one. Each tick reads the board version from Redis (one cheap round trip); only when it
moved does it read the top list, and only when the top list changed does it serialise one frame,
whose bytes are then written to every connection. Waking on changes rather than on the clock
alone takes most of the tick's phase out of the delivery lag.

Slow clients never slow anyone else: a connection's transport is written to only while its unsent
data is below ``ws_slow_buffer_bytes``; above that it is skipped and remembered as *lagging*. A
connection holds no queue, only "the newest frame I have not had": once it drains, it gets the
newest state and nothing in between. A client that stays above the threshold for
``ws_stuck_timeout_s`` is closed with 4008 (too slow); if it does not even take the close frame
within ``ws_close_grace_s`` its socket is aborted. Top frames to one connection are at least
``1 / tick_hz`` apart, so nobody gets more than ``tick_hz`` of them a second.

Players (connections whose upgrade carried ``X-Scoreboard-User-Id``) also get ``me`` frames when
their own score or rank changes, at most ``me_lookups_per_tick`` players per tick (one Lua call),
round-robin so nobody starves. A player's own new score goes out on the next tick (the consumer
names the users it changed): what a player did shows within a tick, not a frame interval. Rank
changes alone, which every move of the board causes for many players, are looked up in rounds
``1 / tick_hz`` apart, so they add at most ``tick_hz`` frames a second to anyone.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import Any

import structlog
from aiohttp import web
from redis.exceptions import RedisError

from broadcaster.board import Board
from broadcaster.frames import CLOSE_RESTART, CLOSE_TOO_SLOW, me_frame, top_frame
from broadcaster.leaderboard import Leaderboard, UnknownPlayer
from broadcaster.metrics import Metrics
from broadcaster.ranking import Entry, TopSnapshot
from broadcaster.settings import Settings
from common import tasks as background

log = structlog.get_logger(__name__)

MeState = tuple[int, int | None]


@dataclass(eq=False, slots=True)
class Watcher:
    """One WebSocket connection, as the fan-out sees it (no queue: only what it last got)."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport
    user_id: str | None
    top_version: int = -1
    top_sent_at: float = -math.inf
    me_state: MeState | None = None
    me_pending: bytes | None = None
    stuck_since: float | None = None
    closing: bool = False


@dataclass(frozen=True, slots=True)
class TopFrame:
    """The current top list and its serialised frame."""

    version: int
    entries: tuple[Entry, ...]
    data: bytes

    @classmethod
    def of(cls, snapshot: TopSnapshot) -> TopFrame:
        """Serialise a snapshot once."""
        data = top_frame(snapshot.version, snapshot.entries)
        return cls(snapshot.version, snapshot.entries, data)


class Fanout:
    """Connected clients and the ticker that keeps them current."""

    def __init__(
        self,
        settings: Settings,
        board: Board,
        leaderboard: Leaderboard,
        metrics: Metrics,
    ) -> None:
        self._settings = settings
        self._board = board
        self._leaderboard = leaderboard
        self._metrics = metrics
        self._interval = 1.0 / settings.tick_hz
        # Broadcasts are at least one interval apart; the margin only absorbs clock rounding.
        self._min_gap = self._interval * 0.99
        self._watchers: dict[Watcher, None] = {}
        self._by_user: dict[str, set[Watcher]] = {}
        self._lagging: set[Watcher] = set()
        self._dirty: set[Watcher] = set()
        self._me_queue: dict[str, None] = {}
        self._urgent: set[str] = set()
        self._frame: TopFrame | None = None
        self._seen_version: int | None = None  # by the top frame
        self._me_version: int | None = None  # by the players' standings
        self._top_pending = False
        self._last_rank_round = -math.inf
        self._next_fallback = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._nudged = asyncio.Event()
        self._last_broadcast = -math.inf
        self.draining = False

    def __len__(self) -> int:
        return len(self._watchers)

    # -- connections --------------------------------------------------------------------------

    async def attach(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, user_id: str | None
    ) -> Watcher:
        """Register a connection and send it the snapshot at once (and its standing, if known)."""
        w = Watcher(ws, transport, user_id)
        self._watchers[w] = None
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(w)
        self._metrics.ws_clients.set(len(self._watchers))
        try:
            await self._send_snapshot(w)
        except BaseException:
            self.detach(w)
            raise
        return w

    async def _send_snapshot(self, w: Watcher) -> None:
        frame = await self._fresh_frame()
        if frame.version > w.top_version and self._writable(w):
            w.transport.write(frame.data)
            w.top_version = frame.version
            w.top_sent_at = asyncio.get_running_loop().time()
            self._metrics.ws_frames.labels("top").inc()
        if w.user_id is not None:
            version, state = await self._lookup_me(w.user_id)
            # The ticker may have sent a newer standing while we looked this one up.
            if w.me_state is None and self._writable(w):
                w.me_state = state
                w.transport.write(me_frame(version, *state))
                self._metrics.ws_frames.labels("me").inc()

    async def _fresh_frame(self) -> TopFrame:
        """The current top frame: the ticker's, unless the board moved since its last look.

        A client (re)connecting right after a change sees it, not the state of the last tick.
        The frame made here goes to this client only; the ticker broadcasts the change to the
        others on its next round.
        """
        frame = self._frame
        try:
            version = await self._board.poll()
        except RedisError:
            version = None
        if frame is not None and (version is None or version == self._seen_version):
            return frame
        # Starting up, Redis down or the board moved: read it now (PostgreSQL if need be).
        snapshot = await self._leaderboard.top(self._settings.top_size)
        frame = self._frame
        if frame is None:
            frame = self._frame = TopFrame.of(snapshot)
        elif snapshot.version > frame.version and snapshot.entries != frame.entries:
            frame = TopFrame.of(snapshot)
        return frame

    def detach(self, w: Watcher) -> None:
        """Forget a connection (its handler ended)."""
        self._watchers.pop(w, None)
        self._lagging.discard(w)
        self._dirty.discard(w)
        if w.user_id is not None:
            same_user = self._by_user.get(w.user_id)
            if same_user is not None:
                same_user.discard(w)
                if not same_user:
                    del self._by_user[w.user_id]
                    self._me_queue.pop(w.user_id, None)
        self._metrics.ws_clients.set(len(self._watchers))

    @staticmethod
    def _writable(w: Watcher) -> bool:
        return not w.closing and not w.transport.is_closing()

    async def _lookup_me(self, user_id: str) -> tuple[int, MeState]:
        version = self._frame.version if self._frame is not None else 0
        found = await self._leaderboard.standings([user_id])
        if found is not None:
            version = max(version, found[0])
            standing = found[1].get(user_id)
            return version, (standing.score, standing.rank) if standing else (0, None)
        try:  # Redis cannot say: ask PostgreSQL
            standing = await self._leaderboard.standing(uuid.UUID(user_id))
        except UnknownPlayer:
            return version, (0, None)
        return version, (standing.score, standing.rank)

    # -- the ticker ---------------------------------------------------------------------------

    def nudge(self, user_ids: Iterable[uuid.UUID] = ()) -> None:
        """Changes of these users reached the board (the consumer says so): tick soon.

        Players among them watching here get their new score on the next tick, without waiting
        out the ``1 / tick_hz`` spacing that rank-only changes respect.
        """
        if self._by_user:
            for user_id in map(str, user_ids):
                if user_id in self._by_user:
                    self._urgent.add(user_id)
                    self._me_queue.setdefault(user_id)
        self._nudged.set()

    async def run(self) -> None:
        """Tick until cancelled; a failing tick is logged once and retried next tick.

        Ticks come every ``1 / tick_hz`` seconds, or sooner after a :meth:`nudge`, at least a
        fifth of that apart (a busy topic must not turn into a busy Redis). A top frame never
        follows the previous one within ``1 / tick_hz``: a change that has to wait for that is
        picked up by a tick at the end of the spacing.
        """
        loop = asyncio.get_running_loop()
        failing = False
        while True:
            start = loop.time()
            self._nudged.clear()  # what arrives from here on is seen by this tick or the next
            try:
                await self.tick(start)
            except Exception:
                if not failing:
                    log.exception("fanout_tick_failed")
                failing = True
            else:
                if failing:
                    log.info("fanout_tick_recovered")
                failing = False
            self._metrics.tick_seconds.observe(loop.time() - start)
            soonest = start + self._interval / 5
            wake_at = start + self._interval
            if self._top_pending:
                wake_at = min(wake_at, max(soonest, self._last_broadcast + self._interval))
            if self._me_queue:  # rank changes waiting for the next round
                wake_at = min(wake_at, max(soonest, self._last_rank_round + self._interval))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake_at):
                    await self._nudged.wait()
                    await asyncio.sleep(max(0.0, soonest - loop.time()))

    async def tick(self, now: float) -> None:
        """One round: notice board changes, refresh players' standings, deliver what is new."""
        snapshot: TopSnapshot | None = None
        moved = False
        top_due = now - self._last_broadcast >= self._min_gap
        try:
            version = await self._board.poll()
        except RedisError:
            version = None
        if version is None:
            # Redis down or the board not built: the leaderboard asks PostgreSQL (and requests
            # the rebuild), at most once a second.
            if now >= self._next_fallback:
                self._next_fallback = now + 1.0
                snapshot = await self._leaderboard.top(self._settings.top_size)
        else:
            if version != self._seen_version and top_due:
                snapshot = await self._board.top(self._settings.top_size)
                self._seen_version = version
            if version != self._me_version:
                self._me_version = version
                moved = True
        self._top_pending = version is not None and version != self._seen_version

        broadcast = False
        current = self._frame
        if snapshot is not None and (
            current is None
            or (snapshot.version > current.version and snapshot.entries != current.entries)
        ):
            self._frame = TopFrame.of(snapshot)
            self._last_broadcast = now
            broadcast = True

        targets: Iterable[Watcher] = (
            list(self._watchers) if broadcast else self._lagging | self._dirty
        )
        self._deliver(targets, now)

        # Players' own standings after everyone's board, so they never delay it.
        if self._by_user:
            if moved:
                for user_id in self._by_user:
                    self._me_queue.setdefault(user_id)
            if self._me_queue:
                await self._refresh_me(now)
                if self._dirty:
                    self._deliver(list(self._dirty), now)

    async def _refresh_me(self, now: float) -> None:
        """Look up the queued players whose standing may be sent now, and stage their frames.

        Players whose own score changed (see :meth:`nudge`) go first, on every tick. The others
        (their rank alone moved) are looked up in rounds at least ``1 / tick_hz`` apart, so rank
        churn sends nobody more than ``tick_hz`` frames a second; a player's own changes are
        bounded by the gateway's rate limits.
        """
        limit = self._settings.me_lookups_per_tick
        urgent = [u for u in self._urgent if u in self._me_queue]  # the rest went already
        batch, self._urgent = urgent[:limit], set(urgent[limit:])
        if now - self._last_rank_round >= self._min_gap and len(batch) < limit:
            self._last_rank_round = now
            chosen = set(batch)
            for user_id in self._me_queue:
                if len(batch) >= limit:
                    break
                if user_id not in chosen:
                    batch.append(user_id)
        if not batch:
            return
        for user_id in batch:
            del self._me_queue[user_id]
        found = await self._leaderboard.standings(batch)
        if found is None:
            return
        version, standings = found
        for user_id in batch:
            standing = standings.get(user_id)
            state: MeState = (standing.score, standing.rank) if standing else (0, None)
            data: bytes | None = None
            for w in self._by_user.get(user_id, ()):
                if w.me_state != state:
                    data = data or me_frame(version, *state)
                    w.me_state = state
                    w.me_pending = data
                    self._dirty.add(w)

    def _deliver(self, targets: Iterable[Watcher], now: float) -> None:
        """Write what each target lacks, skipping (never awaiting) those that cannot take it."""
        frame = self._frame
        limit = self._settings.ws_slow_buffer_bytes
        stuck_after = self._settings.ws_stuck_timeout_s
        sent_top = sent_me = skipped = 0
        for w in targets:
            transport = w.transport
            if w.closing or transport.is_closing():
                continue
            if transport.get_write_buffer_size() > limit:
                skipped += 1
                if w.stuck_since is None:
                    w.stuck_since = now
                elif now - w.stuck_since >= stuck_after:
                    self._close_slow(w)
                    continue
                self._lagging.add(w)
                continue
            w.stuck_since = None
            behind = False
            if frame is not None and frame.version > w.top_version:
                if now - w.top_sent_at >= self._min_gap:
                    transport.write(frame.data)
                    w.top_version = frame.version
                    w.top_sent_at = now
                    sent_top += 1
                else:
                    behind = True
            if w.me_pending is not None:
                transport.write(w.me_pending)
                w.me_pending = None
                sent_me += 1
            self._dirty.discard(w)
            if behind:
                self._lagging.add(w)
            else:
                self._lagging.discard(w)
        if sent_top:
            self._metrics.ws_frames.labels("top").inc(sent_top)
        if sent_me:
            self._metrics.ws_frames.labels("me").inc(sent_me)
        if skipped:
            self._metrics.ws_slow_skips.inc(skipped)

    # -- closing ------------------------------------------------------------------------------

    def _close_slow(self, w: Watcher) -> None:
        w.closing = True
        self._lagging.discard(w)
        self._dirty.discard(w)
        self._metrics.ws_slow_closes.inc()
        log.info(
            "ws_closed_too_slow",
            user_id=w.user_id,
            buffered=w.transport.get_write_buffer_size(),
            stuck_s=self._settings.ws_stuck_timeout_s,
        )
        self._spawn(self._close(w, CLOSE_TOO_SLOW, b"too slow"))

    async def _close(self, w: Watcher, code: int, reason: bytes) -> None:
        """Send a close frame without waiting on the client; cut it off after the grace period."""
        grace = self._settings.ws_close_grace_s
        try:
            async with asyncio.timeout(grace):
                await w.ws.close(code=code, message=reason, drain=False)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("ws_close_incomplete", code=code, error=repr(exc))
        finally:
            # The close frame sits behind whatever the client has not read; if it still has not
            # taken it by then, the socket is aborted.
            asyncio.get_running_loop().call_later(grace, _abort_if_unsent, w.transport)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Shutdown: refuse newcomers, close every client with 1012 so it reconnects elsewhere."""
        self.draining = True
        watchers = [w for w in self._watchers if not w.closing]
        for w in watchers:
            w.closing = True
        log.info("ws_draining", clients=len(watchers))
        await asyncio.gather(*(self._close(w, CLOSE_RESTART, b"service restart") for w in watchers))

    async def close(self) -> None:
        """Stop the close handshakes still running (shutdown, after :meth:`drain`)."""
        for task in list(self._tasks):
            await background.stop(task)


def _abort_if_unsent(transport: asyncio.Transport) -> None:
    # Data still unsent means the socket is open and the client is not reading: cut it off.
    # (Once a transport finished closing, abort() would fail, so it is only called here.)
    if transport.get_write_buffer_size():
        transport.abort()
