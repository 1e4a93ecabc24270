"""Memory per idle WebSocket connection: the broadcaster versus a bare aiohttp WebSocket server.

    uv run python bench/bench_ws_memory.py [--connections 5000]

Starts each server as a subprocess (the broadcaster on a slice of its own: a temporary database,
topics and Redis prefix, removed afterwards), connects 200 clients to warm it up, then
``--connections`` more idle clients (lean protocol-level clients that read the first frame and
then only answer pings), and reports the growth of the server's resident memory divided by the
number of connections. The bare server does what any aiohttp WebSocket endpoint must (upgrade,
send one frame, wait for messages), so the difference is what the broadcaster adds per
connection. Loopback only. Prints one JSON object (the last stdout line). Target: <= 16 KiB per
connection for the broadcaster.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testkit.broadcaster import (
    LeanWatcher,
    free_port,
    http_get,
    rss_kib,
    start_process,
    stop_process,
)
from testkit.env import LOCAL_INFRA, create_test_env, drop_test_env

TARGET_KIB = 16
WARMUP = 200
ROOT = Path(__file__).resolve().parent.parent


def bare_server(port: int) -> None:
    """The baseline: an aiohttp WebSocket endpoint doing the least a real one does."""
    from aiohttp import web

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=1024, compress=False)
        await ws.prepare(request)
        await ws.send_str('{"type":"top","version":0,"entries":[]}')
        async for _ in ws:
            pass
        return ws

    async def ready(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/ws/scoreboard", handler)
    app.router.add_get("/readyz", ready)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def start_bare(port: int) -> subprocess.Popen[bytes]:
    """Run :func:`bare_server` in a process of its own and wait until it answers."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--bare-server", str(port)], cwd=ROOT, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            http_get(f"http://127.0.0.1:{port}/readyz")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("bare server did not start")


async def connect(port: int, count: int) -> list[LeanWatcher]:
    """``count`` idle watchers, each having received its first frame."""
    loop = asyncio.get_running_loop()
    watchers: list[LeanWatcher] = []
    for start in range(0, count, 200):
        wave = []
        for _ in range(min(200, count - start)):
            _, proto = await loop.create_connection(LeanWatcher, "127.0.0.1", port)
            wave.append(proto)
        await asyncio.gather(*(asyncio.wait_for(w.first_top, 30) for w in wave))
        watchers += wave
    return watchers


async def settle(pid: int) -> int:
    """The server's RSS once it stopped moving (allocations after the last handshake)."""
    last = rss_kib(pid)
    for _ in range(20):
        await asyncio.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


async def measure(name: str, port: int, pid: int, connections: int) -> dict[str, Any]:
    """Warm up, then the RSS growth per idle connection."""
    warm = await connect(port, WARMUP)
    before = await settle(pid)
    watchers = await connect(port, connections)
    after = await settle(pid)
    closed_early = sum(w.closed.done() for w in watchers)
    for w in [*warm, *watchers]:
        w.close()
    per_conn = (after - before) / connections
    return {
        "server": name,
        "connections": connections,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_connection": round(per_conn, 2),
        "closed_early": closed_early,
    }


async def run(connections: int) -> dict[str, Any]:
    """Measure the bare server, then the broadcaster on its own slice."""
    port = free_port()
    bare = start_bare(port)
    try:
        baseline = await measure("bare aiohttp", port, bare.pid, connections)
    finally:
        stop_process(bare)

    env = await create_test_env(LOCAL_INFRA)
    try:
        port = free_port()
        server = start_process(env, port)
        try:
            ours = await measure("broadcaster", port, server.pid, connections)
        finally:
            stop_process(server)
    finally:
        await drop_test_env(LOCAL_INFRA, env)
    return {
        "benchmark": "ws_memory",
        "results": [baseline, ours],
        "headline": {
            "broadcaster_kib_per_connection": ours["kib_per_connection"],
            "bare_aiohttp_kib_per_connection": baseline["kib_per_connection"],
        },
        "targets": {"broadcaster_kib_per_connection": TARGET_KIB},
        "added_by_broadcaster_kib": round(
            ours["kib_per_connection"] - baseline["kib_per_connection"], 2
        ),
    }


def main() -> None:
    """Parse arguments, run, print the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if args.bare_server:
        bare_server(args.bare_server)
        return
    print(json.dumps(asyncio.run(run(args.connections))))


if __name__ == "__main__":
    main()
