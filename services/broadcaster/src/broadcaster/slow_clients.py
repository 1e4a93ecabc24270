"""The slow-client policy: a client that cannot keep up is skipped, then closed with 4008.

Slow clients never slow anyone else: a connection's transport is written to only while its
unsent data is below ``ws_slow_buffer_bytes``; above that it is skipped (the ticker remembers it
as lagging, and once it drains it gets the newest state and nothing in between). A client that
stays above the threshold for ``ws_stuck_timeout_s`` is closed with 4008 (too slow); if it does
not even take the close frame within ``ws_close_grace_s`` its socket is aborted
(:meth:`broadcaster.connections.Connections.close`).
"""

from __future__ import annotations

import asyncio

import structlog

from broadcaster.connections import Connections, Watcher
from broadcaster.frames import CLOSE_TOO_SLOW
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.settings import Settings
from common import tasks as background

log = structlog.get_logger(__name__)


class SlowClients:
    """Decides whether a connection may be written to now, and closes those that stay stuck."""

    def __init__(
        self, settings: Settings, metrics: BroadcasterMetrics, connections: Connections
    ) -> None:
        self._limit = settings.ws_slow_buffer_bytes
        self._stuck_after = settings.ws_stuck_timeout_s
        self._metrics = metrics
        self._connections = connections
        self._closing: set[asyncio.Task[None]] = set()

    def can_take(self, w: Watcher, now: float) -> bool:
        """True when ``w``'s unsent data is within the limit, so a write goes out now.

        Otherwise ``w`` is to be skipped; once it has been over the limit for
        ``ws_stuck_timeout_s`` it is also closed with 4008 (then ``w.closing`` is set).
        """
        if w.transport.get_write_buffer_size() <= self._limit:
            w.stuck_since = None
            return True
        if w.stuck_since is None:
            w.stuck_since = now
        elif now - w.stuck_since >= self._stuck_after:
            self._close_too_slow(w)
        return False

    def _close_too_slow(self, w: Watcher) -> None:
        w.closing = True
        self._connections.settle(w)
        self._metrics.ws_slow_closes.inc()
        log.info(
            "ws_closed_too_slow",
            user_id=w.user_id,
            buffered=w.transport.get_write_buffer_size(),
            stuck_s=self._stuck_after,
        )
        task = background.spawn(self._connections.close(w, CLOSE_TOO_SLOW, b"too slow"), "ws-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Stop the close handshakes still running (shutdown, after the drain)."""
        for task in list(self._closing):
            await background.stop(task)
