"""WebSocket ``GET /ws/scoreboard``: upgrade, enforce the limits, hand the socket to the fan-out.

Anyone may watch. When the gateway verified a token it passes the user in
``X-Scoreboard-User-Id``, and the connection also gets that player's ``me`` frames. Clients need
not send anything; they may subscribe to boards' windows (broadcaster.subscriptions). Inbound
messages are capped at ``ws_max_message_bytes`` (larger ones close with 1009) and by a token
bucket (a flood closes with 1008). aiohttp pings every ``ws_heartbeat_s`` and drops a client
that does not answer. Close codes: see broadcaster.frames.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

import structlog
from aiohttp import WSMsgType, web

from broadcaster.components import components_key
from broadcaster.frames import CLOSE_POLICY, CLOSE_RESTART, CLOSE_TRY_LATER, CLOSE_UNAVAILABLE
from broadcaster.handlers import header_user_id
from broadcaster.subscriptions import error_frame

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class InboundBudget:
    """Token bucket for client messages: ``burst`` at once, ``rate`` per second after that."""

    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> bool:
        """Spend a token; False when the client is over its budget."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def _limit_send_buffer(transport: asyncio.Transport, size: int) -> None:
    sock = transport.get_extra_info("socket")
    if size > 0 and sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


async def scoreboard_ws(request: web.Request) -> web.StreamResponse:
    """Serve one watcher until it leaves, is too slow, misbehaves or the replica drains."""
    parts = request.app[components_key]
    settings, fanout, metrics = parts.settings, parts.fanout, parts.metrics
    user = header_user_id(request)  # before the upgrade, so a bad header is a problem+json 400
    ws = web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat_s,
        max_msg_size=settings.ws_max_message_bytes,
        compress=False,  # frames are shared bytes (broadcaster.frames)
        timeout=settings.ws_close_grace_s,
    )
    await ws.prepare(request)
    transport = request.transport
    if fanout.draining:
        metrics.ws_rejected.labels("draining").inc()
        await ws.close(code=CLOSE_RESTART, message=b"service restart")
        return ws
    if len(fanout) >= settings.max_connections or transport is None:
        metrics.ws_rejected.labels("full").inc()
        await ws.close(code=CLOSE_TRY_LATER, message=b"try again later")
        return ws
    _limit_send_buffer(transport, settings.ws_socket_sndbuf)
    loop = asyncio.get_running_loop()
    budget = InboundBudget(
        settings.ws_inbound_rate, settings.ws_inbound_burst, settings.ws_inbound_burst, loop.time()
    )
    try:
        watcher = await fanout.attach(ws, transport, str(user) if user else None)
    except Exception:
        # Neither Redis nor PostgreSQL could give the snapshot; the client reconnects later.
        log.exception("ws_snapshot_failed")
        await ws.close(code=CLOSE_UNAVAILABLE, message=b"board unavailable")
        return ws
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not budget.take(loop.time()):
                metrics.ws_rejected.labels("flood").inc()
                log.info("ws_closed_flood", user_id=watcher.user_id)
                await ws.close(code=CLOSE_POLICY, message=b"too many messages")
                break
            if msg.type == WSMsgType.TEXT and fanout.subscriptions is not None:
                await fanout.subscriptions.handle(watcher, msg.data)
            elif msg.type == WSMsgType.BINARY:
                watcher.transport.write(error_frame("bad_request", "send JSON text messages"))
    finally:
        fanout.detach(watcher)
    return ws
