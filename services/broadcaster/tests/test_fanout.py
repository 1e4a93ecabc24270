"""The fan-out core, tick by tick: registry, coalescing, players' own frames, slow clients.

The board is the real Redis board and reads go through the real reader; the ticks are driven by
hand with chosen clock values, and each connection is a transport that records what it is given
and reports the unsent bytes a test sets (what a client that stops reading looks like from here).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from broadcaster.board_reader import BoardReader
from broadcaster.connections import Watcher
from broadcaster.fanout import Fanout
from broadcaster.frames import CLOSE_RESTART, CLOSE_TOO_SLOW
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.postgres_scores import PostgresScores
from broadcaster.rebuild import Rebuilder
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common.postgres import create_pool
from testkit.broadcaster import Player, SettingsFactory, new_player, parse_frames

SLOW_BUFFER_BYTES = 1024
STUCK_TIMEOUT_S = 2.0


class RecordingTransport(asyncio.Transport):
    """A socket's transport that keeps what is written and reports ``unsent`` bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.unsent = 0
        self.aborted = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.unsent

    def is_closing(self) -> bool:
        return self.aborted.is_set()

    def abort(self) -> None:
        self.aborted.set()

    def frames(self, kind: str) -> list[dict[str, Any]]:
        """The JSON frames of ``kind`` written so far, oldest first."""
        docs = [json.loads(payload) for op, payload in parse_frames(bytes(self.written)) if op == 1]
        return [d for d in docs if d["type"] == kind]


class RecordingWebSocket(web.WebSocketResponse):
    """Keeps the close frame the fan-out hands over (the bytes go through the transport)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed_with: tuple[int, bytes] | None = None
        self.close_sent = asyncio.Event()

    async def close(self, *, code: int = 1000, message: bytes = b"", drain: bool = True) -> bool:
        self.closed_with = (code, message)
        self.close_sent.set()
        return True


@dataclass
class Rig:
    """A fan-out on a board of its own, and its metrics."""

    settings: Settings
    board: RedisBoard
    fanout: Fanout
    registry: CollectorRegistry

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    async def connect(self, user_id: uuid.UUID | None = None) -> tuple[Watcher, RecordingTransport]:
        transport = RecordingTransport()
        player = str(user_id) if user_id is not None else None
        watcher = await self.fanout.attach(RecordingWebSocket(), transport, player)
        return watcher, transport

    async def apply(self, *changes: tuple[Player, int]) -> None:
        await self.board.apply_changes([p.gain(points) for p, points in changes])


@pytest.fixture
async def rig(make_settings: SettingsFactory, board: RedisBoard) -> AsyncIterator[Rig]:
    """A fan-out reading the empty ``board``; a client is slow above 1 KiB unsent."""
    settings = make_settings(
        ws_slow_buffer_bytes=SLOW_BUFFER_BYTES,
        ws_stuck_timeout_s=STUCK_TIMEOUT_S,
        ws_close_grace_s=0.05,
    )
    registry = CollectorRegistry()
    metrics = BroadcasterMetrics.create(registry)
    pool = await create_pool(settings)
    scores = PostgresScores(pool)
    rebuilder = Rebuilder(settings, board, scores, metrics)
    reader = BoardReader(settings, board, scores, rebuilder, metrics)
    fanout = Fanout(settings, board, reader, metrics)
    try:
        yield Rig(settings, board, fanout, registry)
    finally:
        await fanout.close()
        await pool.close()


def _after_connect(rig: Rig, ticks: float = 1.0) -> float:
    """A clock value ``ticks`` tick intervals from now (a snapshot was sent just now)."""
    return asyncio.get_running_loop().time() + ticks * rig.settings.tick_interval_s


async def test_connections_are_registered_with_their_player_until_they_leave(rig: Rig) -> None:
    player = uuid.uuid4()
    anonymous, anonymous_socket = await rig.connect()
    first, first_socket = await rig.connect(player)
    second, _ = await rig.connect(player)
    connections = rig.fanout.connections

    assert len(rig.fanout) == 3
    assert rig.metric("scoreboard_broadcaster_ws_clients") == 3
    assert set(connections.of_player(str(player))) == {first, second}
    # Each got the snapshot at once; the player also their standing (not on the board yet).
    assert [f["version"] for f in anonymous_socket.frames("top")] == [0]
    assert anonymous_socket.frames("me") == []
    assert [(f["score"], f["rank"]) for f in first_socket.frames("me")] == [(0, None)]

    rig.fanout.detach(first)
    assert list(connections.of_player(str(player))) == [second]
    rig.fanout.detach(second)
    rig.fanout.detach(anonymous)
    assert len(rig.fanout) == 0
    assert rig.metric("scoreboard_broadcaster_ws_clients") == 0
    assert str(player) not in connections.players


async def test_changes_between_frames_coalesce_into_the_newest(rig: Rig) -> None:
    a, b = new_player(), new_player()
    _, socket = await rig.connect()
    now = _after_connect(rig)

    await rig.apply((a, 10), (b, 20), (a, 30))
    await rig.fanout.ticker.tick(now)
    # Two more changes within the frame interval: held back, then sent as one frame.
    await rig.apply((b, 40))
    await rig.fanout.ticker.tick(now + rig.settings.tick_interval_s / 2)
    await rig.apply((a, 1))
    await rig.fanout.ticker.tick(now + rig.settings.tick_interval_s / 2 + 0.01)
    await rig.fanout.ticker.tick(now + rig.settings.tick_interval_s)

    frames = socket.frames("top")
    assert [f["version"] for f in frames] == [0, 3, 5]
    assert [(e["username"], e["score"]) for e in frames[-1]["entries"]] == [
        (b.username, 60),
        (a.username, 41),
    ]
    assert rig.metric("scoreboard_broadcaster_ws_frames_sent_total", type="top") == 3


async def test_a_player_gets_their_own_score_at_once_and_rank_changes_a_round_later(
    rig: Rig,
) -> None:
    me, rival, newcomer = new_player(), new_player(), new_player()
    await rig.apply((rival, 100), (me, 50))
    _, mine = await rig.connect(me.user_id)
    _, theirs = await rig.connect(rival.user_id)
    now = _after_connect(rig)
    await rig.fanout.ticker.tick(now)  # a rank round: nothing changed for anyone
    assert [(f["score"], f["rank"]) for f in mine.frames("me")] == [(50, 2)]

    # Half a round later: my own score changes, and a newcomer overtakes me.
    await rig.apply((me, 10), (newcomer, 70))
    rig.fanout.nudge([me.user_id, newcomer.user_id])
    await rig.fanout.ticker.tick(now + rig.settings.tick_interval_s / 2)
    assert [(f["score"], f["rank"]) for f in mine.frames("me")] == [(50, 2), (60, 3)]
    assert [(f["score"], f["rank"]) for f in theirs.frames("me")] == [(100, 1)]

    await rig.apply((newcomer, 50))  # the rival's rank changes, alone
    rig.fanout.nudge([newcomer.user_id])
    await rig.fanout.ticker.tick(now + rig.settings.tick_interval_s * 0.75)
    assert [(f["score"], f["rank"]) for f in theirs.frames("me")] == [(100, 1)]
    await rig.fanout.ticker.tick(now + rig.settings.tick_interval_s)  # the next rank round
    assert [(f["score"], f["rank"]) for f in theirs.frames("me")] == [(100, 1), (100, 2)]


async def test_a_slow_client_is_skipped_then_gets_the_newest_frame_only(rig: Rig) -> None:
    player = new_player()
    _, fast = await rig.connect()
    _, slow = await rig.connect()
    now = _after_connect(rig)
    slow.unsent = SLOW_BUFFER_BYTES + 1

    for i in range(3):
        await rig.apply((player, 10))
        await rig.fanout.ticker.tick(now + i * rig.settings.tick_interval_s)
    assert [f["version"] for f in fast.frames("top")] == [0, 1, 2, 3]
    assert [f["version"] for f in slow.frames("top")] == [0]
    assert rig.metric("scoreboard_broadcaster_ws_slow_skips_total") == 3

    slow.unsent = 0  # it read what it had: the next tick brings it up to date, in one frame
    await rig.fanout.ticker.tick(now + 3 * rig.settings.tick_interval_s)
    assert [f["version"] for f in slow.frames("top")] == [0, 3]
    assert [f["version"] for f in fast.frames("top")] == [0, 1, 2, 3]
    assert rig.metric("scoreboard_broadcaster_ws_slow_closes_total") == 0


async def test_a_client_that_stays_stuck_is_closed_as_too_slow_then_cut_off(rig: Rig) -> None:
    stuck, socket = await rig.connect()
    ws = stuck.ws
    assert isinstance(ws, RecordingWebSocket)
    now = _after_connect(rig)
    socket.unsent = SLOW_BUFFER_BYTES + 1

    await rig.apply((new_player(), 10))
    await rig.fanout.ticker.tick(now)  # skipped: stuck from here
    await rig.fanout.ticker.tick(now + STUCK_TIMEOUT_S - 0.1)  # still skipped, still open
    assert ws.closed_with is None
    await rig.fanout.ticker.tick(now + STUCK_TIMEOUT_S + 0.01)

    async with asyncio.timeout(5):
        await ws.close_sent.wait()
        # The close frame sits behind the unsent data; after the grace period the socket goes.
        await socket.aborted.wait()
    assert ws.closed_with == (CLOSE_TOO_SLOW, b"too slow")
    assert rig.metric("scoreboard_broadcaster_ws_slow_closes_total") == 1
    assert stuck not in rig.fanout.connections.lagging
    assert [f["version"] for f in socket.frames("top")] == [0]


async def test_drain_tells_every_client_to_reconnect_elsewhere(rig: Rig) -> None:
    watchers = [(await rig.connect())[0] for _ in range(2)]
    await rig.fanout.drain()
    assert rig.fanout.draining
    for w in watchers:
        assert isinstance(w.ws, RecordingWebSocket)
        assert w.ws.closed_with == (CLOSE_RESTART, b"service restart")


class StampingTransport(RecordingTransport):
    """Also notes, for each write, the clock value the fan-out was told (``clock[0]``)."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self._clock = clock
        self.stamps: list[float] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.stamps.append(self._clock[0])


async def test_clients_joining_a_busy_board_never_get_more_than_the_cap_in_a_second(
    rig: Rig,
) -> None:
    # Changes at twice the frame rate for 2.5 s, a tick every 10 ms, and clients joining all
    # along: each one's snapshot counts, so for some the next broadcasts must wait.
    loop = asyncio.get_running_loop()
    players = [new_player() for _ in range(5)]
    clock = [loop.time()]
    joined: list[tuple[Watcher, StampingTransport]] = []
    start = loop.time()
    tick = 0
    while loop.time() - start < 2.5:
        if tick % 5 == 0:
            await rig.apply((players[tick % 5], 1 + tick))
        if tick % 11 == 0:
            transport = StampingTransport(clock)
            clock[0] = loop.time()
            w = await rig.fanout.attach(RecordingWebSocket(), transport, None)
            joined.append((w, transport))
        clock[0] = loop.time()
        await rig.fanout.ticker.tick(clock[0])
        await asyncio.sleep(0.01)
        tick += 1
    end = clock[0]

    assert len(joined) >= 5
    for _, transport in joined:
        stamps = transport.stamps  # only top frames: nobody here is signed in
        spans = [stamps[i + 10] - stamps[i] for i in range(len(stamps) - 10)]
        assert min(spans, default=1.0) >= 1.0 - 2e-3, spans
    # Clients there for the last second and a half got about the rate, not less...
    early = [t.stamps for _, t in joined if end - t.stamps[0] >= 1.5]
    assert early
    last_second = [sum(s >= end - 1.0 for s in stamps) for stamps in early]
    assert min(last_second) >= 8, last_second
    # ...and are back on the broadcasts' shared history (no bookkeeping of their own).
    assert all(w.pace is None for w, t in joined if end - t.stamps[0] >= 1.5)


class TimingTransport(RecordingTransport):
    """Also notes the loop's clock at each write, and sets ``wrote``."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []
        self.wrote = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.times.append(asyncio.get_running_loop().time())
        self.wrote.set()


async def test_a_change_just_before_its_slot_goes_at_the_slot(rig: Rig) -> None:
    # The running ticker, and changes that each come 5 ms before the next frame may go: each
    # must go at its slot, not a woken tick's spacing (a fifth of an interval) after its change.
    # (Before, every change of a steady 10/s stream that came ahead of its slot waited 20 ms.)
    loop = asyncio.get_running_loop()
    broadcasts = rig.fanout.connections.broadcasts
    player = new_player()
    transport = TimingTransport()
    await rig.fanout.attach(RecordingWebSocket(), transport, None)
    runner = asyncio.create_task(rig.fanout.ticker.run())
    late: list[float] = []  # how long after its slot each frame was written
    try:
        # A second after its snapshot the connection shares the broadcasts' history again.
        await asyncio.sleep(1.0 + rig.settings.tick_interval_s)
        for points in range(1, 14):
            slot = broadcasts.next_at
            await asyncio.sleep(max(0.0, slot - 0.005 - loop.time()))
            transport.wrote.clear()
            await rig.apply((player, points))
            rig.fanout.nudge()
            await asyncio.wait_for(transport.wrote.wait(), 1)
            if points > 1:  # (the first goes at once: the board was quiet)
                late.append(transport.times[-1] - slot)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner

    assert min(late) >= -1e-3, late  # never before its slot (the timer's slack aside)
    # At its slot, give or take the tick's Redis reads (a woken tick later: 15 ms or more).
    assert statistics.median(late) < 0.008, late
