"""The replica's WebSocket connections as the fan-out sees them: a registry, and no queues.

A connection holds no queue, only what it last got; the registry also knows which connections
owe a write (``lagging``: a top frame was skipped or held back; ``dirty``: a ``me`` frame is
staged). Closing never waits on a client: the close frame is handed over, and a client that has
not taken it within ``ws_close_grace_s`` has its socket aborted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, KeysView
from dataclasses import dataclass

import structlog
from aiohttp import web

from broadcaster.frames import CLOSE_RESTART
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.pacing import Pace, Pacing

log = structlog.get_logger(__name__)

# A player's standing as their last ``me`` frame gave it: (score, rank or None).
MeState = tuple[int, int | None]


@dataclass(eq=False, slots=True)
class Watcher:
    """One WebSocket connection, as the fan-out sees it (no queue: only what it last got)."""

    ws: web.WebSocketResponse
    transport: asyncio.Transport
    user_id: str | None
    top_version: int = -1
    # Its top frames' history (broadcaster.pacing); None: only broadcasts lately, it shares
    # ``Connections.broadcasts``.
    pace: Pace | None = None
    me_state: MeState | None = None
    me_pending: bytes | None = None
    stuck_since: float | None = None
    closing: bool = False
    subscribed: bool = False  # it asked for feeds (broadcaster.subscriptions): no default top

    @property
    def writable(self) -> bool:
        """Neither we nor the transport are closing it."""
        return not self.closing and not self.transport.is_closing()


class Connections:
    """Who is connected here (and as which player), and who owes a write."""

    def __init__(self, metrics: BroadcasterMetrics, close_grace_s: float, pacing: Pacing) -> None:
        self._metrics = metrics
        self.pacing = pacing
        self.broadcasts = pacing.pace()  # the ticker's broadcasts: most connections' history
        self._close_grace_s = close_grace_s
        self._all: dict[Watcher, None] = {}  # an ordered set: broadcasts go in connection order
        self._by_user: dict[str, set[Watcher]] = {}
        self.lagging: set[Watcher] = set()
        self.dirty: set[Watcher] = set()
        self.draining = False

    def __len__(self) -> int:
        return len(self._all)

    def __iter__(self) -> Iterator[Watcher]:
        return iter(self._all)

    @property
    def players(self) -> KeysView[str]:
        """The user ids of the players connected here."""
        return self._by_user.keys()

    def of_player(self, user_id: str) -> Iterable[Watcher]:
        """The connections of one player (none when not connected here)."""
        return self._by_user.get(user_id, ())

    def add(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, user_id: str | None
    ) -> Watcher:
        """Register a connection (``user_id``: the player it belongs to, if any)."""
        w = Watcher(ws, transport, user_id)
        self._all[w] = None
        if user_id is not None:
            self._by_user.setdefault(user_id, set()).add(w)
        self._metrics.ws_clients.set(len(self._all))
        return w

    def own_pace(self, w: Watcher) -> Pace:
        """``w``'s history of its own (forked from the broadcasts' when it shared them)."""
        if w.pace is None:
            w.pace = self.pacing.fork(self.broadcasts)
        return w.pace

    def sent_own(self, w: Watcher, now: float) -> None:
        """Record a top frame of ``w``'s own (not a broadcast) sent at ``now``."""
        self.pacing.sent(self.own_pace(w), now, own=True)

    def remove(self, w: Watcher) -> bool:
        """Forget a connection; True when it was its player's last one here."""
        self._all.pop(w, None)
        self.settle(w)
        last = False
        if w.user_id is not None:
            same_user = self._by_user.get(w.user_id)
            if same_user is not None:
                same_user.discard(w)
                if not same_user:
                    del self._by_user[w.user_id]
                    last = True
        self._metrics.ws_clients.set(len(self._all))
        return last

    def settle(self, w: Watcher) -> None:
        """``w`` owes no write any more (it got everything, or it is being closed)."""
        self.lagging.discard(w)
        self.dirty.discard(w)

    async def close(self, w: Watcher, code: int, reason: bytes) -> None:
        """Send a close frame without waiting on the client; cut it off after the grace period."""
        grace = self._close_grace_s
        try:
            async with asyncio.timeout(grace):
                await w.ws.close(code=code, message=reason, drain=False)
        except (TimeoutError, ConnectionError, RuntimeError) as exc:
            log.debug("ws_close_incomplete", code=code, error=repr(exc))
        finally:
            # The close frame sits behind whatever the client has not read; if it still has not
            # taken it by then, the socket is aborted.
            asyncio.get_running_loop().call_later(grace, _abort_if_unsent, w.transport)

    async def drain(self) -> None:
        """Shutdown: refuse newcomers, close every client with 1012 so it reconnects elsewhere."""
        self.draining = True
        watchers = [w for w in self._all if not w.closing]
        for w in watchers:
            w.closing = True
        log.info("ws_draining", clients=len(watchers))
        await asyncio.gather(*(self.close(w, CLOSE_RESTART, b"service restart") for w in watchers))


def _abort_if_unsent(transport: asyncio.Transport) -> None:
    # Data still unsent means the socket is open and the client is not reading: cut it off.
    # (Once a transport finished closing, abort() would fail, so it is only called here.)
    if transport.get_write_buffer_size():
        transport.abort()
