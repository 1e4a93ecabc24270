"""Test and benchmark support for the broadcaster (like ``aiohttp.test_utils``).

Serving the app in-process, seeding players into PostgreSQL as auth and the score service would
write them, reading frames, and a bare-socket WebSocket client that can stop reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
from aiohttp import ClientWebSocketResponse, WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from redis.asyncio.client import PubSub

from broadcaster.app import create_app
from broadcaster.components import components_key
from broadcaster.settings import Settings
from broadcaster.standings import ScoreRow
from common.events import ScoreChanged
from common.redis_client import RedisClient
from common.wsframes import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    decode_close,
    encode_frame,
    handshake_key,
    iter_frames,
    upgrade_request,
)
from testkit.env import TestEnv

Client = TestClient[web.Request, web.Application]


Send = Callable[[ScoreChanged], Awaitable[None]]


class SettingsFactory(Protocol):
    """Builds Settings for one app, isolated from the others (a test fixture provides it)."""

    def __call__(self, **overrides: Any) -> Settings: ...


@contextlib.asynccontextmanager
async def serve(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[Client]:
    """The app served on a free port; by default once its consumer is positioned and its board
    built."""
    app = create_app(settings)
    client: Client = TestClient(TestServer(app))
    await client.start_server()
    try:
        if wait_ready:
            await asyncio.wait_for(app[components_key].consumer.ready.wait(), timeout=30)
        yield client
    finally:
        await client.close()


@dataclass
class Player:
    """A seeded user and their current score."""

    user_id: uuid.UUID
    username: str
    score: int = 0
    version: int = 0
    reached_at: datetime = datetime(2026, 1, 1, tzinfo=UTC)

    def row(self) -> ScoreRow:
        """The player as the board stores them."""
        return ScoreRow(self.user_id, self.username, self.score, self.version, self.reached_at)

    def gain(self, points: int, at: datetime | None = None) -> ScoreChanged:
        """Raise the score (next version) and return the matching ScoreChanged."""
        self.score += points
        self.version += 1
        self.reached_at = at or datetime.now(UTC)
        return ScoreChanged(
            action_id=uuid.uuid4(),
            user_id=self.user_id,
            username=self.username,
            delta=points,
            score=self.score,
            version=self.version,
            occurred_at=self.reached_at,
        )


def new_player(prefix: str = "p") -> Player:
    """A player with a unique name (not yet in PostgreSQL)."""
    return Player(uuid.uuid4(), f"{prefix}{uuid.uuid4().hex[:12]}")


async def seed(pg: asyncpg.Connection, players: list[Player]) -> None:
    """Write the players' users and scores rows (scores only for those who scored)."""
    await pg.executemany(
        "INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, 'x')",
        [(p.user_id, p.username) for p in players],
    )
    await save_scores(pg, players)


async def save_scores(pg: asyncpg.Connection, players: list[Player]) -> None:
    """Upsert the scores rows of players who scored, as the score service does."""
    await pg.executemany(
        """INSERT INTO scores (user_id, score, version, reached_at) VALUES ($1, $2, $3, $4)
           ON CONFLICT (user_id) DO UPDATE
           SET score = $2, version = $3, reached_at = $4, updated_at = now()""",
        [(p.user_id, p.score, p.version, p.reached_at) for p in players if p.version > 0],
    )


async def next_frame(
    ws: ClientWebSocketResponse, kind: str = "top", wait_s: float = 5.0
) -> dict[str, Any]:
    """The next frame of ``kind`` (others are skipped)."""
    async with asyncio.timeout(wait_s):
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            frame: dict[str, Any] = json.loads(msg.data)
            if frame["type"] == kind:
                return frame


async def frame_where(
    ws: ClientWebSocketResponse, pred: Callable[[dict[str, Any]], bool], wait_s: float = 5.0
) -> dict[str, Any]:
    """The first top frame satisfying ``pred``."""
    async with asyncio.timeout(wait_s):
        while True:
            frame = await next_frame(ws, "top", wait_s)
            if pred(frame):
                return frame


class RawWebSocket:
    """A bare socket that does the WebSocket handshake and then reads only when told to.

    It models a client that stops reading: with a small receive buffer, the server's writes
    back up in the server's transport, which is what the fan-out must cope with.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    async def connect(cls, port: int, *, rcvbuf: int = 4096) -> RawWebSocket:
        """Connect and upgrade; nothing is read after the handshake."""
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = upgrade_request("127.0.0.1", "/ws/scoreboard", handshake_key())
        await loop.sock_sendall(sock, request)
        head = b""
        while b"\r\n\r\n" not in head:
            head += await loop.sock_recv(sock, 1)  # byte by byte: leave the frames unread
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(sock)

    async def read_all(self, wait_s: float = 10.0) -> bytes:
        """Read until the server closes the connection (or ``wait_s``)."""
        loop = asyncio.get_running_loop()
        data = bytearray()
        with contextlib.suppress(ConnectionResetError):
            async with asyncio.timeout(wait_s):
                while chunk := await loop.sock_recv(self.sock, 65536):
                    data += chunk
        return bytes(data)

    def close(self) -> None:
        """Drop the socket."""
        self.sock.close()


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each complete unmasked frame in ``data``."""
    return [
        (first & 0x0F, data[start:end])
        for first, start, end in iter_frames(data, reserved_bits=True)
    ]


class AppliedInbox:
    """Messages on the board's ``applied`` channel (what the gateway's ``Prefer: wait`` awaits)."""

    def __init__(self, pubsub: PubSub) -> None:
        self._pubsub = pubsub

    async def wait_for(self, action_id: uuid.UUID, wait_s: float = 10.0) -> dict[str, Any]:
        """The message announcing that ``action_id`` moved the board."""
        async with asyncio.timeout(wait_s):
            while True:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if msg is not None:
                    doc: dict[str, Any] = json.loads(msg["data"])
                    if doc["action_id"] == str(action_id):
                        return doc


async def subscribed(pubsub: PubSub, channel: str, wait_s: float = 5.0) -> None:
    """Subscribe to ``channel`` and wait until Redis confirms it: only then does a message
    published elsewhere reach this subscriber (on a cluster, PUBLISH travels between nodes)."""
    await pubsub.subscribe(channel)
    async with asyncio.timeout(wait_s):
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            if msg is not None and msg["type"] == "subscribe":
                return


@contextlib.asynccontextmanager
async def applied_inbox(redis: RedisClient, channel: str) -> AsyncIterator[AppliedInbox]:
    """Subscribe to ``channel`` for the duration of the block (confirmed before it starts)."""
    pubsub = redis.pubsub()
    try:
        await subscribed(pubsub, channel)
        yield AppliedInbox(pubsub)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def eventually(
    check: Callable[[], bool], wait_s: float = 10.0, every_s: float = 0.02
) -> None:
    """Wait until ``check()`` holds, for state that no event announces (a metric, a socket)."""
    async with asyncio.timeout(wait_s):
        while not check():  # noqa: ASYNC110 - nothing signals this state
            await asyncio.sleep(every_s)


async def high_score(pg: asyncpg.Connection) -> int:
    """A score above everyone's in the database, so seeded players lead the board."""
    top: int = await pg.fetchval("SELECT coalesce(max(score), 0) FROM scores")
    return top + 1_000_000


_VERSION_KEY = b'"version":'
_PONG = encode_frame(OP_PONG, mask=True)  # empty: nothing to mask, so one frame answers every ping


class LeanWatcher(asyncio.Protocol):
    """A protocol-level WebSocket client for benchmarks: handshake, frame parsing, pongs.

    One aiohttp client process tops out near 8,000 frames a second; this reads frames straight
    off the transport and only looks for the ``version`` of top frames, so a few processes can
    watch thousands of connections. ``on_top(version)`` runs for every top frame.
    """

    def __init__(
        self,
        on_top: Callable[[int], None] | None = None,
        *,
        path: str = "/ws/scoreboard",
        headers: dict[str, str] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.first_top: asyncio.Future[int] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.frames = 0
        self.last_version = -1
        self._on_top = on_top
        self._path = path
        self._headers = headers or {}
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        transport.write(upgrade_request("127.0.0.1", self._path, handshake_key(), self._headers))

    def data_received(self, data: bytes) -> None:
        """Parse whatever complete frames arrived."""
        buf = self._buf
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(bytes(buf[:end]).decode()))
                assert self._transport is not None
                self._transport.close()
                return
            del buf[: end + 4]
            self.upgraded.set_result(None)
        used = 0  # the loop's ``end``: the last complete frame's end
        for first, start, used in iter_frames(buf, reserved_bits=True):
            self._frame(first & 0x0F, buf, start, used)
        del buf[:used]

    def _frame(self, opcode: int, buf: bytearray, start: int, end: int) -> None:
        self.frames += 1
        if opcode == OP_TEXT:
            at = buf.find(_VERSION_KEY, start, end)
            if at < 0 or buf[start + 9 : start + 12] != b"top":
                return
            comma = buf.find(b",", at, end)
            version = int(buf[at + len(_VERSION_KEY) : comma])
            self.last_version = version
            if not self.first_top.done():
                self.first_top.set_result(version)
            if self._on_top is not None:
                self._on_top(version)
        elif opcode == OP_PING and self._transport is not None:
            self._transport.write(_PONG)
        elif opcode == OP_CLOSE and not self.closed.done():
            self.closed.set_result(decode_close(buf[start:end])[0])

    def connection_lost(self, exc: Exception | None) -> None:
        """Remember that the server went away."""
        if not self.upgraded.done():
            self.upgraded.set_exception(exc or ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        """Drop the connection."""
        if self._transport is not None:
            self._transport.close()


# -- the service as a process (benchmarks) ------------------------------------------------------


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str) -> bytes:
    """The body of a GET (loopback URLs only)."""
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback only
        body: bytes = resp.read()
        return body


def start_process(env: TestEnv, port: int, **settings: str) -> subprocess.Popen[bytes]:
    """``python -m broadcaster`` on ``env``'s slice, once its /readyz answers 200."""
    environ = env.environ()
    environ.update(
        {
            "SCOREBOARD_PORT": str(port),
            "SCOREBOARD_GROUP_ID_PREFIX": f"{env.topic_prefix}broadcaster",
            "SCOREBOARD_REPLICA_ID": f"bench-{port}",
            "SCOREBOARD_LOG_LEVEL": "WARNING",
        }
    )
    environ.update({f"SCOREBOARD_{k.upper()}": v for k, v in settings.items()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "broadcaster"], env=environ, stdin=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the broadcaster exited with {proc.returncode}")
        try:
            http_get(f"http://127.0.0.1:{port}/readyz")
            return proc
        except OSError:
            time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError("the broadcaster did not get ready in 60 s")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (graceful drain), SIGKILL if it is still there after 20 s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def rss_kib(pid: int) -> int:
    """Resident memory of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
