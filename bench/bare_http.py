"""The ingest benchmark's floor: the least a Python JSON endpoint does per request.

    python bench/bare_http.py PORT TOP_JSON_FILE

An aiohttp app on uvloop with the services' garbage-collector settings, like the gateway:
``POST /update`` reads the body, decodes it as JSON, checks it is an object with an
``action_id``, and answers 202 with a small JSON body (the gateway's 202 is about as big);
``GET /top`` answers the bytes of ``TOP_JSON_FILE`` (a real top-10 answer of the gateway, read
once). No token, no Redis, no Kafka: what the gateway adds to this is what its checks cost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import uvloop
from aiohttp import web

from common.runner import tune_gc

_top = web.AppKey("top", bytes)


async def update(request: web.Request) -> web.Response:
    """Decode, check the shape, answer 202."""
    body = json.loads(await request.read())
    if not isinstance(body, dict) or "action_id" not in body:
        return web.json_response({"title": "bad request"}, status=400)
    return web.json_response({"status": "accepted", "action_id": body["action_id"]}, status=202)


async def top(request: web.Request) -> web.Response:
    """The stored top-10 answer."""
    return web.Response(body=request.app[_top], content_type="application/json")


async def ready(_: web.Request) -> web.Response:
    """Up."""
    return web.Response(text="ok")


def create_app(top_json: bytes) -> web.Application:
    """The app, serving ``top_json`` at ``GET /top``."""
    app = web.Application()
    app[_top] = top_json
    app.router.add_post("/update", update)
    app.router.add_get("/top", top)
    app.router.add_get("/readyz", ready)
    return app


def main() -> None:
    """Serve on the port given, until SIGTERM."""
    port, top_file = int(sys.argv[1]), Path(sys.argv[2])
    tune_gc()  # as the services do
    web.run_app(
        create_app(top_file.read_bytes()),
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
