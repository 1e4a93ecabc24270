"""The fan-out benchmark's floor: the least a Python WebSocket broadcaster can do per frame.

    python bench/bare_broadcaster.py PORT

An aiohttp app on uvloop with the services' garbage-collector settings, like the broadcaster:
``GET /ws`` upgrades (compression off), sends the current frame and then only reads (aiohttp
answers pings); ``POST /publish`` takes a frame's JSON, frames it once and writes the same bytes
to every connection's transport at once, inside the request. No Kafka, no Redis, no ticker, no
slow-client policy, no frame-rate cap: what the broadcaster adds to this is what it costs, and
what this achieves on the same client fleet is what a faster Python server would have shown.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop
from aiohttp import web

from common.runner import tune_gc
from common.wsframes import OP_TEXT, encode_frame

_sockets = web.AppKey("sockets", dict[asyncio.Transport, None])
_current = web.AppKey("current", list[bytes])


async def watch(request: web.Request) -> web.WebSocketResponse:
    """Serve one watcher: the current frame, then everything published."""
    ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1024, compress=False)
    await ws.prepare(request)
    transport = request.transport
    assert transport is not None
    sockets = request.app[_sockets]
    transport.write(request.app[_current][0])
    sockets[transport] = None
    try:
        async for _ in ws:
            pass
    finally:
        sockets.pop(transport, None)
    return ws


async def publish(request: web.Request) -> web.Response:
    """Frame the body once, write it to every connection."""
    frame = encode_frame(OP_TEXT, await request.read())
    request.app[_current][0] = frame
    for transport in request.app[_sockets]:
        if not transport.is_closing():
            transport.write(frame)
    return web.Response(status=204)


async def ready(_: web.Request) -> web.Response:
    """Up."""
    return web.Response(text="ok")


def create_app() -> web.Application:
    """The app: its sockets and the current frame under typed keys."""
    app = web.Application()
    app[_sockets] = {}
    app[_current] = [encode_frame(OP_TEXT, b'{"type":"top","version":0,"entries":[]}')]
    app.router.add_get("/ws", watch)
    app.router.add_post("/publish", publish)
    app.router.add_get("/readyz", ready)
    return app


def main() -> None:
    """Serve on the port given, until SIGTERM."""
    port = int(sys.argv[1])
    tune_gc()  # as the services do
    web.run_app(
        create_app(),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
