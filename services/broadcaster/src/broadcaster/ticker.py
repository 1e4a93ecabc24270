"""The ticker: one loop keeps every connection current, one serialisation per change, no waiting.

The ticker runs ``tick_hz`` times a second (10), and sooner when the consumer reports applied
changes (:meth:`Ticker.wake`), sending top frames no faster than :mod:`broadcaster.pacing` allows
(at most ``tick_hz`` in any second; a change after a quiet spell goes at once). Each tick reads
the board version from Redis (one cheap round trip); only when it moved does it read the top
list, and only when the top list changed does it serialise one frame, whose bytes are then
written to every connection. Waking on changes rather than on the clock
alone takes most of the tick's phase out of the delivery lag. Each connection's top frames are
paced the same way, so nobody gets more than ``tick_hz`` of them in any second; changes in
between coalesce into the next frame.

Writes never wait: a connection the slow-client policy skips (:mod:`broadcaster.slow_clients`)
is remembered as lagging and gets the newest frame once it can take it. Players' ``me`` frames
are staged after everyone's board (:mod:`broadcaster.me_lookups`), so they never delay it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

import structlog
from opentelemetry import trace
from redis.exceptions import RedisError

from broadcaster.board_reader import BoardReader
from broadcaster.connections import Connections, Watcher
from broadcaster.frames import top_frame
from broadcaster.me_lookups import MeLookups
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from broadcaster.slow_clients import SlowClients
from broadcaster.standings import Entry, TopSnapshot

log = structlog.get_logger(__name__)


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


class Ticker:
    """Notices board changes and delivers what each connection lacks."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        reader: BoardReader,
        metrics: BroadcasterMetrics,
        connections: Connections,
        me: MeLookups,
        slow: SlowClients,
    ) -> None:
        self._top_size = settings.top_size
        self._board = board
        self._reader = reader
        self._metrics = metrics
        self._connections = connections
        self._me = me
        self._slow = slow
        self._interval = settings.tick_interval_s
        self._pacing = connections.pacing
        self._broadcasts = connections.broadcasts  # paced as each connection is: most share it
        self._broadcast_at = -math.inf  # when the last one went
        self._frame: TopFrame | None = None
        self._seen_version: int | None = None  # by the top frame
        self._top_pending = False
        self._next_fallback = 0.0
        self._nudged = asyncio.Event()
        # The sampled board applies whose changes the next push carries (its span's links).
        self._applies: list[trace.Link] = []

    @property
    def frame(self) -> TopFrame | None:
        """The top frame last broadcast (None before the first)."""
        return self._frame

    def wake(self) -> None:
        """Tick soon: changes reached the board (called inside the board apply's span)."""
        ctx = trace.get_current_span().get_span_context()
        if ctx.trace_flags.sampled and len(self._applies) < 32:
            self._applies.append(trace.Link(ctx))
        self._nudged.set()

    async def run(self) -> None:
        """Tick until cancelled; a failing tick is logged once and retried next tick.

        Ticks come every ``1 / tick_hz`` seconds, or sooner after a :meth:`wake`; woken ticks
        at least a fifth of that apart (a busy topic must not turn into a busy Redis). Only
        woken ticks count for that spacing: a change right after a clock tick goes at once
        (counting the clock ticks held one change in five back by up to 20 ms). A change the
        pacing holds back is picked up by a tick as soon as the next broadcast is due.
        """
        loop = asyncio.get_running_loop()
        failing = False
        woken_at = -math.inf
        while True:
            start = loop.time()
            self._nudged.clear()  # what arrives from here on is seen by this tick or the next
            try:
                if self._applies:
                    await self._traced_tick(start)
                else:
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
            wake_at = start + self._interval
            if self._top_pending:  # the change goes the moment the pacing lets it
                wake_at = min(wake_at, self._broadcasts.next_at)
            if self._me.queued:  # rank changes waiting for the next round
                wake_at = min(wake_at, max(start + self._interval / 5, self._me.next_rank_round_at))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake_at):
                    await self._nudged.wait()
                    await asyncio.sleep(max(0.0, woken_at + self._interval / 5 - loop.time()))
                    woken_at = loop.time()

    async def _traced_tick(self, now: float) -> None:
        """The round after traced board applies, in a span of our own linked to them (no
        instrumentation sees a push): it delivers what they changed, unless the round before
        already did (when it read the board between their write and their nudge)."""
        links, self._applies = self._applies, []
        tracer = trace.get_tracer(__name__)  # per round: the provider may change (tests)
        with tracer.start_as_current_span("board push", links=links) as span:
            await self.tick(now)
            span.set_attribute(
                "scoreboard.board.version", self._frame.version if self._frame else 0
            )
            span.set_attribute("scoreboard.ws.connections", len(self._connections))

    async def tick(self, now: float) -> None:
        """One round: notice board changes, refresh players' standings, deliver what is new."""
        snapshot: TopSnapshot | None = None
        moved = False
        top_due = self._pacing.due(self._broadcasts, now)
        try:
            version = await self._board.poll()
        except RedisError:
            version = None
        if version is None:
            # Redis down or the board not built: the reader asks PostgreSQL (and requests the
            # rebuild), at most once a second.
            if now >= self._next_fallback:
                self._next_fallback = now + 1.0
                snapshot = await self._reader.top(self._top_size)
        else:
            if version != self._seen_version and top_due:
                snapshot = await self._board.top(self._top_size)
                self._seen_version = version
            moved = self._me.board_moved_to(version)
        self._top_pending = version is not None and version != self._seen_version

        broadcast = False
        current = self._frame
        if snapshot is not None and (
            current is None
            or (snapshot.version > current.version and snapshot.entries != current.entries)
        ):
            self._frame = TopFrame.of(snapshot)
            self._pacing.sent(self._broadcasts, now)
            self._broadcast_at = now
            broadcast = True

        connections = self._connections
        targets: Iterable[Watcher] = (
            list(connections) if broadcast else connections.lagging | connections.dirty
        )
        self._deliver(targets, now)

        # Players' own standings after everyone's board, so they never delay it.
        if connections.players:
            if moved:
                self._me.queue_everyone()
            if self._me.queued:
                await self._me.refresh(now)
                if connections.dirty:
                    self._deliver(list(connections.dirty), now)

    async def fresh_frame(self) -> TopFrame:
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
        snapshot = await self._reader.top(self._top_size)
        frame = self._frame
        if frame is None:
            frame = self._frame = TopFrame.of(snapshot)
        elif snapshot.version > frame.version and snapshot.entries != frame.entries:
            frame = TopFrame.of(snapshot)
        return frame

    def _deliver(self, targets: Iterable[Watcher], now: float) -> None:
        """Write what each target lacks, skipping (never awaiting) those that cannot take it.

        The top frame, when it is the broadcast of this round, goes to every connection that
        shares the broadcasts' history without a look (the broadcast was due, so it is due for
        them); one with a history of its own is checked against it, and shares again once it
        has had only broadcasts for a while (broadcaster.pacing). A connection that lags (it was
        slow, or its own history held a broadcast back) catches up with the next broadcast
        while they are flowing, so it falls back in step; when none came for an interval, it
        gets the frame as one of its own.
        """
        frame = self._frame
        connections = self._connections
        pacing = self._pacing
        broadcast = now == self._broadcast_at
        # A broadcast is on its way: a change waits for one, or the last went under an interval
        # ago (the 1 ms: the tick an interval later must find them stopped).
        flowing = self._top_pending or now - self._broadcast_at < self._interval - 1e-3
        sent_top = sent_me = skipped = 0
        for w in targets:
            if not w.writable:
                continue
            if not self._slow.can_take(w, now):
                skipped += 1
                if not w.closing:  # (closed as too slow: it owes nothing any more)
                    connections.lagging.add(w)
                continue
            behind = False
            transport = w.transport
            if frame is not None and frame.version > w.top_version and not w.subscribed:
                pace = w.pace
                if broadcast:
                    if pace is None:
                        transport.write(frame.data)
                        w.top_version = frame.version
                        sent_top += 1
                    elif pacing.due(pace, now):
                        transport.write(frame.data)
                        w.top_version = frame.version
                        sent_top += 1
                        pacing.sent(pace, now)
                        if pacing.in_step(pace, now):
                            w.pace = None
                    else:
                        behind = True
                elif flowing:
                    behind = True  # it catches up with the next broadcast
                else:
                    pace = connections.own_pace(w)
                    if pacing.due(pace, now):
                        transport.write(frame.data)
                        w.top_version = frame.version
                        sent_top += 1
                        pacing.sent(pace, now, own=True)
                    else:
                        behind = True
            if w.me_pending is not None:
                transport.write(w.me_pending)
                w.me_pending = None
                sent_me += 1
            connections.dirty.discard(w)
            if behind:
                connections.lagging.add(w)
            else:
                connections.lagging.discard(w)
        if sent_top:
            self._metrics.ws_frames.labels("top").inc(sent_top)
        if sent_me:
            self._metrics.ws_frames.labels("me").inc(sent_me)
        if skipped:
            self._metrics.ws_slow_skips.inc(skipped)
