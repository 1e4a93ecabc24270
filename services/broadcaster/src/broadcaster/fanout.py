"""Fan-out of the board to WebSocket clients: one ticker, one serialisation, no waiting on anyone.

The parts, each in a module of its own:

- :mod:`broadcaster.connections`: the registry of connections (no queues: each holds only what it
  last got), closing without waiting on a client, the drain on shutdown (1012).
- :mod:`broadcaster.ticker`: ``tick_hz`` times a second, and sooner after changes, reads the
  board and writes one serialised top frame to every connection, at most ``tick_hz`` a second to
  each.
- :mod:`broadcaster.me_lookups`: players' own ``me`` frames (their own new score on the next
  tick, rank-only changes in rounds ``1 / tick_hz`` apart).
- :mod:`broadcaster.slow_clients`: a client that cannot take more is skipped (it gets the newest
  state later), and closed with 4008 when it stays that way.

:class:`Fanout` puts them together for the WebSocket edge (:mod:`broadcaster.ws`) and the wiring
(:mod:`broadcaster.app`): a new connection gets its snapshot at once, then the ticker's frames.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable

from aiohttp import web

from broadcaster.board_reader import BoardReader
from broadcaster.connections import Connections, Watcher
from broadcaster.frames import me_frame
from broadcaster.me_lookups import MeLookups
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from broadcaster.slow_clients import SlowClients
from broadcaster.subscriptions import Subscriptions
from broadcaster.ticker import Ticker


class Fanout:
    """Connected clients and the ticker that keeps them current."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        reader: BoardReader,
        metrics: BroadcasterMetrics,
    ) -> None:
        self._metrics = metrics
        self.connections = Connections(metrics, settings.ws_close_grace_s, settings.pacing)
        self.me = MeLookups(settings, reader, self.connections)
        self.slow = SlowClients(settings, metrics, self.connections)
        self.ticker = Ticker(settings, board, reader, metrics, self.connections, self.me, self.slow)
        self.subscriptions: Subscriptions | None = None  # the feeds clients ask for (app.py)

    def __len__(self) -> int:
        return len(self.connections)

    @property
    def draining(self) -> bool:
        """The replica is shutting down: newcomers are turned away."""
        return self.connections.draining

    async def attach(
        self, ws: web.WebSocketResponse, transport: asyncio.Transport, user_id: str | None
    ) -> Watcher:
        """Register a connection and send it the snapshot at once (and its standing, if known)."""
        w = self.connections.add(ws, transport, user_id)
        try:
            await self._send_snapshot(w)
        except BaseException:
            self.detach(w)
            raise
        return w

    async def _send_snapshot(self, w: Watcher) -> None:
        frame = await self.ticker.fresh_frame()
        if frame.version > w.top_version and w.writable:
            w.transport.write(frame.data)
            w.top_version = frame.version
            self.connections.sent_own(w, asyncio.get_running_loop().time())
            self._metrics.ws_frames.labels("top").inc()
        if w.user_id is not None:
            current = self.ticker.frame
            version, state = await self.me.lookup(
                w.user_id, current.version if current is not None else 0
            )
            # The ticker may have sent a newer standing while we looked this one up.
            if w.me_state is None and w.writable:
                w.me_state = state
                w.transport.write(me_frame(version, *state))
                self._metrics.ws_frames.labels("me").inc()

    def detach(self, w: Watcher) -> None:
        """Forget a connection (its handler ended)."""
        if self.subscriptions is not None:
            self.subscriptions.drop(w)
        if self.connections.remove(w) and w.user_id is not None:
            self.me.forget(w.user_id)

    def nudge(self, user_ids: Iterable[uuid.UUID] = ()) -> None:
        """Changes of these users reached the board (the consumer says so): tick soon.

        Players among them watching here get their new score on the next tick, without waiting
        out the ``1 / tick_hz`` spacing that rank-only changes respect.
        """
        self.me.nudge(user_ids)
        self.ticker.wake()
        if self.subscriptions is not None:
            self.subscriptions.wake()

    async def run(self) -> None:
        """Tick until cancelled (:meth:`broadcaster.ticker.Ticker.run`), and the
        subscriptions' ticker beside it (:meth:`broadcaster.subscriptions.Subscriptions.run`)."""
        if self.subscriptions is None:
            await self.ticker.run()
            return
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.ticker.run())
            tasks.create_task(self.subscriptions.run())

    async def drain(self) -> None:
        """Shutdown: refuse newcomers, close every client with 1012 so it reconnects elsewhere."""
        await self.connections.drain()

    async def close(self) -> None:
        """Stop the close handshakes still running (shutdown, after :meth:`drain`)."""
        await self.slow.close()
