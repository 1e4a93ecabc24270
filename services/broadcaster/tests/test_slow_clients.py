"""A client that stops reading never delays the others, and is closed with 4008 (too slow)."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp import ClientWebSocketResponse

from broadcaster.components import components_key
from broadcaster.frames import CLOSE_TOO_SLOW
from common.health import registry_key
from common.wsframes import decode_close
from testkit.broadcaster import (
    Client,
    Player,
    RawWebSocket,
    Send,
    SettingsFactory,
    eventually,
    high_score,
    next_frame,
    parse_frames,
    save_scores,
    seed,
    serve,
)

STUCK_TIMEOUT_S = 2.0


@pytest.fixture
async def players(pg: asyncpg.Connection) -> list[Player]:
    """Ten leaders with long names: top frames of about 1.2 KB fill a stuck socket sooner."""
    base = await high_score(pg)
    players = [Player(uuid.uuid4(), f"slow-{i:02d}-" + "x" * 23) for i in range(10)]
    for i, p in enumerate(players):
        p.gain(base + i)
    await seed(pg, players)
    return players


@pytest.fixture
async def client(make_settings: SettingsFactory, players: list[Player]) -> AsyncIterator[Client]:
    """Small socket buffers and a 2 s stuck timeout, so a stuck client shows within seconds."""
    settings = make_settings(
        ws_stuck_timeout_s=STUCK_TIMEOUT_S,
        ws_slow_buffer_bytes=8192,
        ws_socket_sndbuf=8192,
        ws_close_grace_s=10.0,
    )
    async with serve(settings) as client:
        yield client


async def _latencies(
    ws: ClientWebSocketResponse,
    send: Send,
    players: list[Player],
    start_version: int,
    changes: int,
) -> list[float]:
    """Send ``changes`` changes ten a second; per top frame, how long after its newest change it
    arrived (the board version counts the changes, so a frame's version names its newest one)."""
    loop = asyncio.get_running_loop()
    sent_at: dict[int, float] = {}
    lags: list[float] = []

    async def watch() -> None:
        while True:
            frame = await next_frame(ws, "top")
            lags.append(loop.time() - sent_at[frame["version"]])
            if frame["version"] == start_version + changes:
                return

    watcher = asyncio.create_task(watch())
    for i in range(changes):
        sent_at[start_version + i + 1] = loop.time()
        await send(players[i % 10].gain(1))
        await asyncio.sleep(0.1)
    await asyncio.wait_for(watcher, timeout=5)
    return lags


async def test_stuck_client_neither_delays_others_nor_stays(
    client: Client, players: list[Player], pg: asyncpg.Connection, send: Send
) -> None:
    board = client.app[components_key].board
    registry = client.app[registry_key]
    assert client.server.port is not None

    def slow_closes() -> float:
        return registry.get_sample_value("scoreboard_broadcaster_ws_slow_closes_total") or 0.0

    async with client.ws_connect("/ws/scoreboard") as normal:
        await next_frame(normal, "top", wait_s=1.0)
        version = await board.poll() or 0
        alone = await _latencies(normal, send, players, version, changes=10)

        stuck = await RawWebSocket.connect(client.server.port, rcvbuf=4096)
        try:
            version += 10
            # Long enough to fill the stuck socket's buffers and outlast the stuck timeout.
            beside_stuck = await _latencies(normal, send, players, version, changes=50)
            await eventually(lambda: slow_closes() >= 1, wait_s=5)
            # What the stuck client finds once it reads again: frames, then "too slow".
            frames = parse_frames(await stuck.read_all(wait_s=10))
        finally:
            stuck.close()
    await save_scores(pg, players)

    await eventually(lambda: len(client.app[components_key].fanout) == 0, wait_s=5)
    assert frames[-1][0] == 0x8  # a close frame
    assert decode_close(frames[-1][1]) == (CLOSE_TOO_SLOW, "too slow")
    # It received the first frames only: the server skipped it rather than queueing for it.
    assert sum(1 for op, _ in frames if op == 0x1) < 50
    # The normal client did not notice.
    assert max(beside_stuck) < 0.5, beside_stuck
    assert statistics.median(beside_stuck) < statistics.median(alone) + 0.1, (alone, beside_stuck)
