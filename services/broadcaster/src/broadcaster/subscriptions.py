"""Live subscriptions: a WebSocket client asks for (board, window) feeds besides the default top.

A client sends ``{"type":"subscribe","board":B,"window":W,"around":N}`` (``around`` optional,
0..50) and ``{"type":"unsubscribe","board":B,"window":W}``; it may hold
``MAX_SUBSCRIPTIONS`` at once. Its first subscribe ends the default board's untagged top frames
for that connection (it now says what it wants; ``global``/``all-time`` can be asked for like any
other). Per subscription it gets:

- at once, the current period's top frame, tagged ``board``, ``window``, ``period`` (the
  snapshot; also what re-subscribing or reconnecting gives);
- a new top frame whenever that period's top list changes;
- when the period ends, a ``period`` frame (the closed period, the new one and its next reset),
  then the new period's top frame;
- with ``around`` > 0 on a signed-in connection, an ``around`` frame (its rank and N players
  either side) at once and whenever that slice changes: one around read per such subscriber
  when the feed's version moved, at most once per ``1 / tick_hz`` per feed.

The cost does not grow with the subscribers: one :class:`Feed` per (board, window) that anyone
here subscribes to polls its period's version in Redis once a tick (one pipelined round trip for
all feeds), reads the top list only when the version moved and serialises one frame only when
the list changed; the same bytes go to every subscriber. Delivery follows the default feed's
rules: top frames to one connection, of all its feeds and the default one together, are at
least ``1 / tick_hz`` apart (the feed owed longest goes first; changes in between coalesce into
the newest frame), and a client the slow-client policy skips gets the newest state once it can
take it (:mod:`broadcaster.slow_clients`: skipped, then closed with 4008).

Bad requests (unknown board or window, a season window between seasons, too many subscriptions,
JSON that is not a request) get an ``error`` frame and the connection stays open; floods and
oversized messages close it as before (:mod:`broadcaster.ws`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import structlog
from redis.exceptions import RedisError

from broadcaster.board_periods import (
    BoardPeriods,
    NoCurrentPeriod,
    Target,
    UnknownBoard,
    UnknownWindow,
    WindowNotOnBoard,
)
from broadcaster.connections import Connections, Watcher
from broadcaster.frames import text_frame
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.pacing import Pace
from broadcaster.period_boards import Ranked, Slice
from broadcaster.settings import Settings
from broadcaster.slow_clients import SlowClients
from common.events import utcnow
from common.problems import Problem
from common.redis_client import RedisClient

log = structlog.get_logger(__name__)

MAX_SUBSCRIPTIONS: Final = 8
MAX_AROUND: Final = 50

FeedKey = tuple[str, str]  # (board id, window)


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def error_frame(code: str, detail: str, request: dict[str, Any] | None = None) -> bytes:
    """``{"type":"error","code":C,"detail":D[,"board":B,"window":W]}``."""
    doc: dict[str, Any] = {"type": "error", "code": code, "detail": detail}
    for name in ("board", "window"):
        if request is not None and isinstance(request.get(name), str):
            doc[name] = request[name][:64]
    return text_frame(_dumps(doc))


def _top_doc(t: Target, version: int, entries: tuple[Ranked, ...]) -> bytes:
    doc = {
        "type": "top",
        "board": t.board.id,
        "window": t.window,
        "period": t.period.id,
        "version": version,
        "entries": [e.as_json() for e in entries],
    }
    return text_frame(_dumps(doc))


def _around_doc(t: Target, found: Slice) -> bytes:
    doc = {
        "type": "around",
        "board": t.board.id,
        "window": t.window,
        "period": t.period.id,
        "version": found.version,
        "players": found.players,
        "rank": found.found,
        "entries": [e.as_json() for e in found.entries],
    }
    return text_frame(_dumps(doc))


def _period_doc(base: Target, closed: str | None, t: Target | None) -> bytes:
    doc = {
        "type": "period",
        "board": base.board.id,
        "window": base.window,
        "closed": closed,
        "current": None if t is None else t.period.as_json(),
        "next_reset": None
        if t is None or t.period.ends_at is None
        else t.period.ends_at.isoformat(),
    }
    return text_frame(_dumps(doc))


class BadSubscription(Exception):
    """A client request the connection answers with an error frame."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(eq=False, slots=True)
class Feed:
    """One (board, window) that someone here subscribes to: its current period's top frame.

    ``seq`` counts the frames made (a subscriber's progress); ``rolled`` is the ``period`` frame
    of the last rollover, owed before the top frame to subscribers still on an older period.
    """

    key: FeedKey
    target: Target | None  # None: a season window between seasons
    last: Target  # the last period it had (its board and window, between seasons)
    subscribers: dict[Watcher, int] = field(default_factory=dict)  # -> seq last sent
    seq: int = 0
    data: bytes = b""
    entries: tuple[Ranked, ...] | None = None
    seen_version: int | None = None
    next_fallback: float = 0.0
    changed_at: float = -math.inf
    rolled: bytes | None = None
    rolled_seq: int = 0  # the first seq of the current period
    version: int = 0  # the last top frame's (it only grows within a period)
    loaded: asyncio.Event = field(default_factory=asyncio.Event)
    around: dict[Watcher, Around] = field(default_factory=dict)  # players who asked for it
    around_due: bool = False  # the version moved since their slices were last read
    around_pace: Pace | None = None  # its around re-reads (None: none yet this period)


@dataclass(eq=False, slots=True)
class Around:
    """A signed-in subscriber's own rank and ``n`` players either side: what it last got."""

    user_id: uuid.UUID
    n: int
    last: tuple[int | None, tuple[Ranked, ...]] | None = None
    pending: bytes | None = None


class Subscriptions:
    """The feeds of this replica and who subscribes to which."""

    def __init__(
        self,
        settings: Settings,
        redis: RedisClient,
        periods: BoardPeriods,
        metrics: BroadcasterMetrics,
        slow: SlowClients,
        connections: Connections,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._top_size = settings.top_size
        self._interval = settings.tick_interval_s
        self._pacing = settings.pacing
        self._redis = redis
        self._periods = periods
        self._metrics = metrics
        self._slow = slow
        self._connections = connections  # (the pacing of each client's top frames)
        self.clock = clock
        self._feeds: dict[FeedKey, Feed] = {}
        self._of: dict[Watcher, dict[FeedKey, Feed]] = {}
        self._owing: set[Watcher] = set()
        self._nudged = asyncio.Event()

    def __len__(self) -> int:
        return len(self._feeds)

    def wake(self) -> None:
        """Tick soon: changes reached the boards."""
        self._nudged.set()

    # -- client requests ----------------------------------------------------------------------

    async def handle(self, w: Watcher, raw: str) -> None:
        """Answer one client message: subscribe, unsubscribe, or an error frame."""
        request: dict[str, Any] | None = None
        try:
            with contextlib.suppress(ValueError):
                loaded = json.loads(raw)
                request = loaded if isinstance(loaded, dict) else None
            if request is None:
                raise BadSubscription("bad_request", "send a JSON object with a type")
            kind = request.get("type")
            board, window = request.get("board"), request.get("window")
            if kind not in ("subscribe", "unsubscribe"):
                raise BadSubscription("bad_request", "type must be subscribe or unsubscribe")
            if not isinstance(board, str) or not isinstance(window, str):
                raise BadSubscription("bad_request", "board and window must be strings")
            if kind == "unsubscribe":
                self.unsubscribe(w, (board, window))
                return
            around = request.get("around", 0)
            if type(around) is not int or not 0 <= around <= MAX_AROUND:
                raise BadSubscription(
                    "bad_request", f"around must be a whole number 0..{MAX_AROUND}"
                )
            await self.subscribe(w, board, window, around)
        except BadSubscription as exc:
            if w.writable:
                w.transport.write(error_frame(exc.code, exc.detail, request))
                self._metrics.ws_frames.labels("error").inc()

    async def subscribe(self, w: Watcher, board_id: str, window: str, around: int = 0) -> None:
        """Add (or renew) a subscription and send its snapshot at once (and the player's
        ``around`` frame, when signed in and ``around`` > 0)."""
        mine = self._of.setdefault(w, {})
        key = (board_id, window)
        if key not in mine and len(mine) >= MAX_SUBSCRIPTIONS:
            raise BadSubscription(
                "too_many_subscriptions",
                f"at most {MAX_SUBSCRIPTIONS} subscriptions per connection; unsubscribe first",
            )
        feed = self._feeds.get(key)
        if feed is None:
            try:
                t = await self._periods.resolve(board_id, window, None, self.clock())
            except Problem as exc:
                if not mine:
                    self._of.pop(w, None)
                raise BadSubscription(_code(exc), exc.detail or exc.title) from None
            feed = self._feeds.get(key)  # another subscriber may have made it meanwhile
            if feed is None:
                feed = self._feeds[key] = Feed(key, t, t)
                try:
                    await self._refresh(feed, asyncio.get_running_loop().time(), force=True)
                finally:
                    feed.loaded.set()
        await feed.loaded.wait()
        if feed.target is None:
            raise BadSubscription("no_current_period", f"no period of {key} is running")
        if feed.entries is None and feed.target is not None:  # just rolled over, or unread
            await self._refresh(feed, asyncio.get_running_loop().time(), force=True)
        if feed.entries is None and feed.target is not None:
            if not feed.subscribers:
                self._feeds.pop(key, None)
            if not mine:
                self._of.pop(w, None)
            raise BadSubscription("unavailable", "the board cannot be read right now; try again")
        w.subscribed = True
        mine[key] = feed
        feed.subscribers[w] = feed.seq
        self._count()
        if w.writable and feed.data:
            w.transport.write(feed.data)
            self._connections.sent_own(w, asyncio.get_running_loop().time())
            self._metrics.ws_frames.labels("top").inc()
        feed.around.pop(w, None)
        if around > 0 and w.user_id is not None:
            mine_around = feed.around[w] = Around(uuid.UUID(w.user_id), around)
            await self._read_around(feed, [mine_around])
            if mine_around.pending is not None and w.writable:
                w.transport.write(mine_around.pending)
                mine_around.pending = None
                self._metrics.ws_frames.labels("around").inc()

    def unsubscribe(self, w: Watcher, key: FeedKey) -> None:
        """Drop one subscription (nothing happens when there was none)."""
        feed = self._of.get(w, {}).pop(key, None)
        if feed is not None:
            self._leave(w, feed)
        if w.writable:
            w.transport.write(
                text_frame(_dumps({"type": "unsubscribed", "board": key[0], "window": key[1]}))
            )

    def drop(self, w: Watcher) -> None:
        """Forget a connection's subscriptions (it left)."""
        self._owing.discard(w)
        for feed in self._of.pop(w, {}).values():
            self._leave(w, feed)

    def _leave(self, w: Watcher, feed: Feed) -> None:
        feed.subscribers.pop(w, None)
        feed.around.pop(w, None)
        if not feed.subscribers and feed.loaded.is_set():
            self._feeds.pop(feed.key, None)
        self._count()

    def _count(self) -> None:
        self._metrics.ws_feeds.set(len(self._feeds))
        self._metrics.ws_subscriptions.set(sum(len(f.subscribers) for f in self._feeds.values()))

    # -- the ticker ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Tick every ``1 / tick_hz`` until cancelled: sooner after a :meth:`wake` (woken ticks
        at least a fifth of that apart), and when the pacing lets a held frame go."""
        loop = asyncio.get_running_loop()
        failing = False
        woken_at = -math.inf
        while True:
            start = loop.time()
            self._nudged.clear()
            try:
                await self.tick(start)
            except Exception:
                if not failing:
                    log.exception("subscriptions_tick_failed")
                failing = True
            else:
                failing = False
            wake_at = start + self._interval
            # Frames the pacing held back (not slow clients': those wait for the clock tick):
            # the tick when the first may go.
            held = [t for w in self._owing if w.pace and (t := w.pace.next_at) > start]
            if held:
                wake_at = min(wake_at, min(held))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(wake_at):
                    await self._nudged.wait()
                    await asyncio.sleep(max(0.0, woken_at + self._interval / 5 - loop.time()))
                    woken_at = loop.time()

    async def tick(self, now: float) -> None:
        """One round: roll periods over, notice changed tops, deliver what each client lacks."""
        feeds = [f for f in self._feeds.values() if f.loaded.is_set()]
        if feeds:
            instant = self.clock()
            for f in feeds:
                self._roll_over(f, instant)
            live = [f for f in feeds if f.target is not None]
            versions: list[Any] = [None] * len(live)
            if live:
                try:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for f in live:
                            pipe.get(f.target.keys.version)  # type: ignore[union-attr]
                        versions = await pipe.execute()
                except RedisError:
                    pass
            for f, raw in zip(live, versions, strict=True):
                version = None if raw is None else int(raw)
                if version is None:
                    if now >= f.next_fallback:  # not built or Redis down: PostgreSQL, 1/s
                        f.next_fallback = now + 1.0
                        await self._refresh(f, now)
                elif version != f.seen_version:
                    f.seen_version = version
                    f.around_due = True
                    await self._refresh(f, now)
            for f in live:
                if f.around and f.around_due and self._around_due(f, now):
                    f.around_due = False
                    await self._read_around(f, list(f.around.values()))
                    self._owing.update(w for w, a in f.around.items() if a.pending is not None)
        self._deliver(now)

    def _around_due(self, f: Feed, now: float) -> bool:
        """May the feed's players' neighbourhoods be re-read now (paced as top frames are)?
        If so, the re-read is counted."""
        if f.around_pace is None:
            f.around_pace = self._pacing.pace()
        elif not self._pacing.due(f.around_pace, now):
            return False
        self._pacing.sent(f.around_pace, now)
        return True

    async def _read_around(self, f: Feed, players: list[Around]) -> None:
        """Re-read these players' neighbourhoods (concurrently); stage the ones that changed."""
        t = f.target
        if t is None or not players:
            return
        found = await asyncio.gather(
            *(self._periods.around(t, a.user_id, a.n) for a in players), return_exceptions=True
        )
        for a, got in zip(players, found, strict=True):
            if isinstance(got, BaseException):
                log.warning("subscription_around_failed", board=t.board.id, error=repr(got))
                continue
            state = (got.found, got.entries)
            if state != a.last and f.target is t:
                a.last = state
                a.pending = _around_doc(t, got)

    def _roll_over(self, f: Feed, instant: datetime) -> None:
        t = f.target
        if t is not None and t.period.contains(instant):
            return
        base = t or f.last  # a season window between seasons waits for the next one
        period = base.board.period_at(base.window, instant)
        if t is None and period is None:
            return
        nxt = (
            None
            if period is None
            else self._periods.target(base.board, base.window, period, instant)
        )
        f.rolled = _period_doc(base, None if t is None else t.period.id, nxt)
        f.last = nxt or base
        f.target, f.entries, f.seen_version = nxt, None, None
        f.seq += 1
        f.rolled_seq = f.seq
        f.data = b""  # until the new period's top is read
        f.changed_at = -math.inf
        f.next_fallback = 0.0
        f.version = 0
        f.around_due, f.around_pace = True, None
        for a in f.around.values():
            a.last = a.pending = None
        self._owing.update(f.subscribers)
        log.info(
            "subscription_period_rolled",
            board=base.board.id,
            window=base.window,
            closed=None if t is None else t.period.id,
        )

    async def _refresh(self, f: Feed, now: float, *, force: bool = False) -> None:
        """Read the period's top; make a new frame only when the list changed."""
        t = f.target
        if t is None:
            return
        try:
            top = await self._periods.page(t, self._top_size, None)
        except Exception as exc:  # PostgreSQL down too: keep what we have
            log.warning("subscription_top_failed", board=t.board.id, error=repr(exc))
            return
        if f.target is not t or (not force and top.entries == f.entries):
            return
        # A period dropped and rebuilt (a ban) restarts its version from PostgreSQL; frames
        # keep growing.
        f.version = max(top.version, f.version + 1)
        f.entries, f.data = top.entries, _top_doc(t, f.version, top.entries)
        f.seq += 1
        f.changed_at = now
        self._owing.update(f.subscribers)

    def _deliver(self, now: float) -> None:
        """Write to each owing client the newest frame of the feed owed longest (one per gap)."""
        sent = skipped = sent_around = 0
        for w in list(self._owing):
            if not w.writable:
                self._owing.discard(w)
                continue
            feeds = self._of.get(w, {}).values()
            behind = [f for f in feeds if f.subscribers.get(w, f.seq) < f.seq]
            arounds = [a for f in feeds if (a := f.around.get(w)) and a.pending is not None]
            if not behind and not arounds:
                self._owing.discard(w)
                continue
            if not self._slow.can_take(w, now):
                skipped += 1
                continue
            for a in arounds:  # as ``me`` frames: made at most once per 1 / tick_hz per feed
                assert a.pending is not None
                w.transport.write(a.pending)
                a.pending = None
                sent_around += 1
            if not behind:
                self._owing.discard(w)
                continue
            if not self._pacing.due(self._connections.own_pace(w), now):
                continue
            f = min(behind, key=lambda f: f.changed_at)
            last = f.subscribers[w]
            data = f.data
            if f.rolled is not None and last < f.rolled_seq:
                data = f.rolled + data  # the rollover first (also when it lagged past it)
            w.transport.write(data)
            f.subscribers[w] = f.seq
            self._connections.sent_own(w, now)
            sent += 1
            if len(behind) == 1:
                self._owing.discard(w)
        if sent:
            self._metrics.ws_frames.labels("top").inc(sent)
        if sent_around:
            self._metrics.ws_frames.labels("around").inc(sent_around)
        if skipped:
            self._metrics.ws_slow_skips.inc(skipped)


def _code(exc: Problem) -> str:
    """The error frame's code for a period that cannot be resolved."""
    if isinstance(exc, UnknownBoard):
        return "unknown_board"
    if isinstance(exc, UnknownWindow | WindowNotOnBoard):
        return "unknown_window"
    if isinstance(exc, NoCurrentPeriod):
        return "no_current_period"
    return "unavailable" if exc.status >= 500 else "bad_request"
