"""The raw upstream WebSocket: a real TCP server playing the broadcaster byte by byte, and a
recording stand-in for the client's transport (whose write buffer the tests set)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from gateway.wsupstream import Ended, UpstreamHandshakeError, UpstreamSocket

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def server_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """An unmasked frame, as a server sends it."""
    first = (0x80 if fin else 0) | opcode
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", first, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", first, 126, size) + payload
    return struct.pack("!BBQ", first, 127, size) + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One frame from the gateway; it must be masked (RFC 6455 5.1)."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    size = b1 & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    elif size == 127:
        size = struct.unpack("!Q", await reader.readexactly(8))[0]
    mask = await reader.readexactly(4)
    data = await reader.readexactly(size)
    return b0 & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(data))


@dataclass
class Peer:
    """The server side of one connection, after the handshake."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    request: str


@dataclass
class ClientTransport:
    """Records what the upstream socket writes to "the client"."""

    buffered: int = 0
    closing: bool = False
    data: bytearray = field(default_factory=bytearray)
    writes: int = 0

    def write(self, data: bytes) -> None:
        self.data += data
        self.writes += 1

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


async def until(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) until ``condition()`` holds."""
    async with asyncio.timeout(5):
        while not condition():  # noqa: ASYNC110 - polling state a protocol callback changes
            await asyncio.sleep(0.01)


Accept = Callable[[str], str]
Connect = Callable[..., Awaitable[tuple[UpstreamSocket, Peer]]]


def good_accept(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()  # noqa: S324


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connect an UpstreamSocket to a fresh raw server; returns it and the server's side."""
    servers: list[asyncio.Server] = []
    opened: list[UpstreamSocket] = []
    writers: list[asyncio.StreamWriter] = []

    async def make(
        accept: Accept = good_accept, status: str = "101 Switching Protocols", **kwargs: float
    ) -> tuple[UpstreamSocket, Peer]:
        peers: asyncio.Queue[Peer] = asyncio.Queue()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
            key = next(
                line.split(":", 1)[1].strip()
                for line in head.split("\r\n")
                if line.lower().startswith("sec-websocket-key:")
            )
            writer.write(
                f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept(key)}\r\n\r\n".encode()
            )
            await peers.put(Peer(reader, writer, head))

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        loop = asyncio.get_running_loop()
        options = {"high_water": 1000, "stuck_after_s": 0.3, **kwargs}
        _, upstream = await loop.create_connection(
            lambda: UpstreamSocket(
                high_water=int(options["high_water"]), stuck_after_s=options["stuck_after_s"]
            ),
            "127.0.0.1",
            port,
        )
        opened.append(upstream)
        async with asyncio.timeout(5):
            await upstream.handshake(
                f"127.0.0.1:{port}", "/ws/scoreboard", {"X-Scoreboard-User-Id": "u-1"}
            )
            peer = await peers.get()
        return upstream, peer

    yield make
    for upstream in opened:
        upstream.abort()
    for writer in writers:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    for server in servers:
        server.close()
        await server.wait_closed()


async def test_the_upgrade_request_carries_the_forwarded_headers(connect: Connect) -> None:
    _, peer = await connect()
    lines = peer.request.split("\r\n")
    assert lines[0] == "GET /ws/scoreboard HTTP/1.1"
    assert "Upgrade: websocket" in lines
    assert "Sec-WebSocket-Version: 13" in lines
    assert "X-Scoreboard-User-Id: u-1" in lines


@pytest.mark.parametrize(
    ("accept", "status"),
    [(lambda key: "d3Jvbmc=", "101 Switching Protocols"), (good_accept, "403 Forbidden")],
)
async def test_a_refused_or_wrong_upgrade_fails(
    connect: Connect, accept: Accept, status: str
) -> None:
    with pytest.raises(UpstreamHandshakeError):
        await connect(accept=accept, status=status)


async def test_data_frames_reach_the_client_byte_for_byte(connect: Connect) -> None:
    upstream, peer = await connect(high_water=10**9)
    early = server_frame(0x1, b'{"type":"top"}')
    peer.writer.write(early)  # before the client is attached: held, then written first
    await peer.writer.drain()
    await asyncio.sleep(0.05)
    client = ClientTransport()
    upstream.attach(client)  # type: ignore[arg-type]
    frames = [
        server_frame(0x1, b"x" * 200),  # 16-bit length
        server_frame(0x2, b"y" * 70_000),  # 64-bit length
        server_frame(0x1, b"part-", fin=False) + server_frame(0x0, b"two"),  # fragmented
    ]
    stream = b"".join(frames)
    for i in range(0, 400):  # the first bytes one at a time: frames split anywhere
        peer.writer.write(stream[i : i + 1])
        await peer.writer.drain()
    peer.writer.write(stream[400:])
    await peer.writer.drain()
    await until(lambda: len(client.data) >= len(early) + len(stream))
    assert bytes(client.data) == early + stream


async def test_pings_are_answered_upstream_and_not_passed_on(connect: Connect) -> None:
    upstream, peer = await connect()
    client = ClientTransport()
    upstream.attach(client)  # type: ignore[arg-type]
    peer.writer.write(server_frame(0x9, b"hb-42"))
    await peer.writer.drain()
    async with asyncio.timeout(5):
        assert await read_client_frame(peer.reader) == (0xA, b"hb-42")
    assert client.data == b""


async def test_a_close_from_the_broadcaster_ends_the_pipe_with_its_code(connect: Connect) -> None:
    upstream, peer = await connect()
    upstream.attach(ClientTransport())  # type: ignore[arg-type]
    peer.writer.write(server_frame(0x8, struct.pack("!H", 4008) + b"too slow"))
    await peer.writer.drain()
    async with asyncio.timeout(5):
        assert await upstream.ended == Ended(code=4008, reason="too slow")
    upstream.close(1000)  # the reply, then the connection goes
    async with asyncio.timeout(5):
        assert await read_client_frame(peer.reader) == (0x8, struct.pack("!H", 1000))
        assert await peer.reader.read() == b""


async def test_client_messages_go_upstream_masked(connect: Connect) -> None:
    upstream, peer = await connect()
    upstream.send(0x1, b"hello" * 40)
    async with asyncio.timeout(5):
        assert await read_client_frame(peer.reader) == (0x1, b"hello" * 40)


async def _behind_a_full_client(
    connect: Connect, *, stuck_after_s: float
) -> tuple[UpstreamSocket, ClientTransport]:
    """A pipe whose client's buffer is over the high-water mark, after one upstream frame."""
    upstream, peer = await connect(high_water=1000, stuck_after_s=stuck_after_s)
    client = ClientTransport(buffered=5000)
    upstream.attach(client)  # type: ignore[arg-type]
    peer.writer.write(server_frame(0x1, b"a"))
    await peer.writer.drain()
    return upstream, client


async def test_a_full_client_buffer_pauses_the_broadcaster_then_resumes(connect: Connect) -> None:
    upstream, client = await _behind_a_full_client(connect, stuck_after_s=5)
    await until(lambda: client.writes > 0)
    transport = upstream._transport
    assert transport is not None
    assert not transport.is_reading()
    client.buffered = 0  # the client caught up
    await until(transport.is_reading)
    assert not upstream.ended.done()


async def test_a_client_stuck_past_the_limit_ends_the_pipe(connect: Connect) -> None:
    upstream, _ = await _behind_a_full_client(connect, stuck_after_s=0.3)
    async with asyncio.timeout(5):
        assert await upstream.ended == Ended(stuck=True)


async def test_a_masked_frame_from_the_broadcaster_is_a_protocol_error(connect: Connect) -> None:
    upstream, peer = await connect()
    upstream.attach(ClientTransport())  # type: ignore[arg-type]
    peer.writer.write(b"\x81\x81abcd" + b"x")  # masked: servers must not mask
    await peer.writer.drain()
    async with asyncio.timeout(5):
        ended = await upstream.ended
        assert ended.code == 1002
        assert await peer.reader.read() == b""
