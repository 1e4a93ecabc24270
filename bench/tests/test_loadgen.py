"""The lean load-generator clients against real servers: aiohttp's, and raw asyncio ones that
send exactly the bytes a test needs (fragments, masked frames, broken handshakes)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import WSMsgType, web
from pytest_aiohttp import AiohttpServer

from bench.loadgen import (
    HttpClient,
    HttpConnectionClosed,
    HttpProtocolError,
    WsClosed,
    WsHandshakeError,
    WsProtocolError,
    WsWatcher,
    encode_post,
)

# -- HTTP ------------------------------------------------------------------------------------


class Seen:
    """What the test server saw: client connections (by peer address) and concurrency."""

    def __init__(self) -> None:
        self.peers: set[object] = set()
        self.requests = 0
        self.active = 0
        self.max_active = 0


async def http_server(aiohttp_server: AiohttpServer, **kwargs: Any) -> tuple[int, Seen]:
    seen = Seen()

    async def echo(request: web.Request) -> web.Response:
        assert request.transport is not None
        seen.peers.add(request.transport.get_extra_info("peername"))
        seen.requests += 1
        seen.active += 1
        seen.max_active = max(seen.max_active, seen.active)
        try:
            body = await request.read()
            delay = float(request.query.get("delay", "0"))
            if delay:
                await asyncio.sleep(delay)
            status = int(request.query.get("status", "200"))
            if status == 204:
                return web.Response(status=204)
            doc = {
                "body": body.decode(),
                "token": request.headers.get("Authorization", ""),
                "type": request.content_type,
            }
            resp = web.json_response(doc, status=status)
            if request.query.get("close"):
                resp.force_close()
            return resp
        finally:
            seen.active -= 1

    async def big(request: web.Request) -> web.Response:
        size = int(request.query["size"])
        return web.Response(body=bytes(i % 251 for i in range(size)))

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"part one")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_post("/big", big)
    app.router.add_post("/chunked", chunked)
    server = await aiohttp_server(app, **kwargs)
    assert server.port is not None
    return server.port, seen


@pytest.fixture
async def http(aiohttp_server: AiohttpServer) -> AsyncIterator[tuple[HttpClient, Seen]]:
    port, seen = await http_server(aiohttp_server)
    client = HttpClient("127.0.0.1", port, max_connections=8)
    yield client, seen
    await client.close()


def test_encode_post_is_one_complete_request() -> None:
    raw = encode_post("h:1", "/p", b'{"a":1}', {"Authorization": "Bearer t"})
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b'{"a":1}'
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /p HTTP/1.1"
    assert b"Content-Length: 7" in lines
    assert b"Connection: keep-alive" in lines
    assert b"Authorization: Bearer t" in lines
    assert b"Host: h:1" in lines


async def test_sequential_requests_reuse_one_connection(http: tuple[HttpClient, Seen]) -> None:
    client, seen = http
    for i in range(20):
        status, body = await client.post(
            f"/echo?status={200 + 2 * (i % 2)}",
            json.dumps({"i": i}).encode(),
            {"Authorization": f"Bearer tok{i}"},
        )
        assert status == (200 if i % 2 == 0 else 202)
        doc = json.loads(body)
        assert doc == {
            "body": f'{{"i": {i}}}',
            "token": f"Bearer tok{i}",
            "type": "application/json",
        }
    status, body = await client.post("/echo?status=404", b"{}")
    assert status == 404
    assert json.loads(body)["body"] == "{}"
    assert await client.post("/echo?status=204", b"") == (204, b"")
    assert seen.requests == 22
    assert len(seen.peers) == 1
    assert client.connections_opened == 1


async def test_concurrent_requests_share_a_bounded_pool(http: tuple[HttpClient, Seen]) -> None:
    client, seen = http  # max_connections=8
    raws = [client.encode_post("/echo?delay=0.01", f"req{i}".encode()) for i in range(100)]
    results = await asyncio.gather(*(client.send(raw) for raw in raws))
    assert [json.loads(body)["body"] for _, body in results] == [f"req{i}" for i in range(100)]
    assert {status for status, _ in results} == {200}
    assert seen.requests == 100
    assert seen.max_active <= 8
    assert 1 < len(seen.peers) <= 8
    assert client.connections_opened == len(seen.peers)
    # A second burst reuses the same connections.
    await asyncio.gather(*(client.send(raw) for raw in raws[:20]))
    assert client.connections_opened == len(seen.peers) <= 8


async def test_pool_exhaustion_waits_for_a_free_connection(
    aiohttp_server: AiohttpServer,
) -> None:
    port, seen = await http_server(aiohttp_server)
    client = HttpClient("127.0.0.1", port, max_connections=2)
    try:
        raw = client.encode_post("/echo?delay=0.05", b"x")
        started = time.perf_counter()
        results = await asyncio.gather(*(client.send(raw) for _ in range(6)))
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    assert [s for s, _ in results] == [200] * 6
    assert seen.max_active == 2
    assert len(seen.peers) == 2
    assert elapsed >= 0.14  # three rounds of two


async def test_large_body_split_across_reads(http: tuple[HttpClient, Seen]) -> None:
    client, _ = http
    status, body = await client.post("/big?size=300000", b"")
    assert status == 200
    assert body == bytes(i % 251 for i in range(300000))
    status, body = await client.post("/echo", b"after")  # the connection is still in sync
    assert (status, json.loads(body)["body"]) == (200, "after")
    assert client.connections_opened == 1


async def test_send_timed_reports_when_the_response_arrived(http: tuple[HttpClient, Seen]) -> None:
    client, _ = http
    before = time.perf_counter()
    status, _, at = await client.send_timed(client.encode_post("/echo?delay=0.05", b""))
    after = time.perf_counter()
    assert status == 200
    assert before + 0.05 <= at <= after


async def test_chunked_response_is_refused_loudly(http: tuple[HttpClient, Seen]) -> None:
    client, _ = http
    with pytest.raises(HttpProtocolError, match="Transfer-Encoding 'chunked'"):
        await client.post("/chunked", b"")
    status, _ = await client.post("/echo", b"")  # the pool recovers with a new connection
    assert status == 200


async def test_connection_close_response_is_not_reused(http: tuple[HttpClient, Seen]) -> None:
    client, seen = http
    assert (await client.post("/echo?close=1", b""))[0] == 200
    assert (await client.post("/echo", b""))[0] == 200
    assert (await client.post("/echo", b""))[0] == 200
    assert client.connections_opened == 2
    assert len(seen.peers) == 2


async def test_idle_connection_closed_by_the_server(aiohttp_server: AiohttpServer) -> None:
    port, seen = await http_server(aiohttp_server, keepalive_timeout=0.1)
    client = HttpClient("127.0.0.1", port)
    try:
        assert (await client.post("/echo", b"1"))[0] == 200
        await asyncio.sleep(0.5)  # the server drops the idle connection
        assert (await client.post("/echo", b"2"))[0] == 200
    finally:
        await client.close()
    assert client.connections_opened == 2
    assert len(seen.peers) == 2


async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> tuple[asyncio.Server, int, asyncio.Event]:
    done = asyncio.Event()  # set when a connection's handler has finished

    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        finally:
            writer.close()
            done.set()

    server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port, done


@pytest.mark.parametrize(
    ("reply", "partial"),
    [(b"", False), (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True)],
)
async def test_server_closing_mid_request_is_surfaced(reply: bytes, partial: bool) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()

    server, port, handled = await raw_server(handle)
    client = HttpClient("127.0.0.1", port)
    try:
        with pytest.raises(HttpConnectionClosed) as caught:
            await client.post("/x", b"")
        assert caught.value.partial is partial
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_responses_in_pieces_and_without_length() -> None:
    """Heads and bodies split across reads; a body that runs to the connection's end."""
    pieces = [
        b"HTTP/1.1 201 Created\r\nConte",
        b"nt-Length: 11\r\nX-A: b\r",
        b"\n\r\nhello",
        b" world",
    ]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.01)
        await reader.readuntil(b"\r\n\r\n")  # the same connection, a second request
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        await writer.drain()

    server, port, handled = await raw_server(handle)
    client = HttpClient("127.0.0.1", port)
    try:
        assert await client.post("/a", b"") == (201, b"hello world")
        assert await client.post("/b", b"") == (200, b"until the end")
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
    assert client.connections_opened == 1


async def test_response_timeout(aiohttp_server: AiohttpServer) -> None:
    port, _ = await http_server(aiohttp_server)
    client = HttpClient("127.0.0.1", port, timeout=0.1)
    try:
        with pytest.raises(HttpConnectionClosed, match="timed out"):
            await client.post("/echo?delay=1", b"")
        assert (await client.post("/echo", b""))[0] == 200
    finally:
        await client.close()


# -- WebSocket against aiohttp ------------------------------------------------------------------

BIG = json.dumps({"type": "top", "entries": ["x" * 70000]})
MEDIUM = json.dumps({"type": "top", "entries": ["y" * 200]})
ME = json.dumps({"type": "me", "version": 3, "score": 7, "rank": 1})


class WsLog:
    """What the aiohttp WebSocket handler saw."""

    def __init__(self) -> None:
        self.offered: str = ""
        self.pong: bytes | None = None
        self.close_code: int | None = None
        self.client_messages: list[WSMsgType] = []
        self.done = asyncio.Event()


async def ws_server(aiohttp_server: AiohttpServer, *, server_closes: bool) -> tuple[int, WsLog]:
    log = WsLog()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        log.offered = request.headers.get("Sec-WebSocket-Protocol", "")
        ws = web.WebSocketResponse(protocols=("bearer",), autoping=False, timeout=2)
        await ws.prepare(request)
        try:
            await ws.send_str(ME)
            await ws.send_str(MEDIUM)
            await ws.send_bytes(b"\x00binary")
            await ws.send_str(BIG)
            await ws.ping(b"are-you-there")
            msg = await ws.receive(timeout=2)
            if msg.type is WSMsgType.PONG:
                log.pong = msg.data
            await ws.send_str(ME.replace("7", "8"))
            if server_closes:
                await ws.close(code=4000, message=b"bye")
            else:
                async for msg in ws:
                    log.client_messages.append(msg.type)
            log.close_code = ws.close_code
            return ws
        finally:
            log.done.set()

    app = web.Application()
    app.router.add_get("/ws/scoreboard", handler)
    server = await aiohttp_server(app)
    assert server.port is not None
    return server.port, log


async def test_ws_handshake_frames_ping_and_server_close(aiohttp_server: AiohttpServer) -> None:
    port, log = await ws_server(aiohttp_server, server_closes=True)
    got: list[tuple[float, bytes]] = []
    before = time.perf_counter()
    watcher = await WsWatcher.connect(
        "127.0.0.1",
        port,
        "/ws/scoreboard",
        lambda at, payload: got.append((at, payload)),
        protocols=("bearer", "tok-123"),
    )
    assert watcher.protocol == "bearer"
    assert await asyncio.wait_for(watcher.closed, 5) == (4000, "bye")
    await asyncio.wait_for(log.done.wait(), 5)
    assert log.offered == "bearer, tok-123"
    assert [p.decode() for _, p in got] == [ME, MEDIUM, BIG, ME.replace("7", "8")]
    assert all(before <= at <= time.perf_counter() for at, _ in got)
    assert [at for at, _ in got] == sorted(at for at, _ in got)
    assert log.pong == b"are-you-there"
    assert log.close_code == 4000  # the server got our close reply (1006 otherwise)
    assert watcher.messages == 4  # text messages; the binary one is dropped


async def _collecting_watcher(port: int, got: list[bytes], want: bytes | None = None) -> WsWatcher:
    """A watcher on the test server that appends every text payload it keeps to ``got``."""
    return await WsWatcher.connect(
        "127.0.0.1",
        port,
        "/ws/scoreboard",
        lambda _, payload: got.append(payload),
        protocols=("bearer", "tok"),
        want=want,
    )


async def test_ws_want_filters_without_decoding(aiohttp_server: AiohttpServer) -> None:
    port, _ = await ws_server(aiohttp_server, server_closes=True)
    got: list[bytes] = []
    watcher = await _collecting_watcher(port, got, want=b'"me"')
    await asyncio.wait_for(watcher.closed, 5)
    assert [json.loads(p)["score"] for p in got] == [7, 8]


async def test_ws_client_close(aiohttp_server: AiohttpServer) -> None:
    port, log = await ws_server(aiohttp_server, server_closes=False)
    got: list[bytes] = []
    watcher = await _collecting_watcher(port, got)
    async with asyncio.timeout(5):
        while len(got) < 4:  # noqa: ASYNC110 - the callback sets no event
            await asyncio.sleep(0.01)
    assert await asyncio.wait_for(watcher.close(1000, "enough"), 5) == (1000, "")
    await asyncio.wait_for(log.done.wait(), 5)
    assert log.close_code == 1000
    assert log.pong == b"are-you-there"


async def test_ws_upgrade_refused(aiohttp_server: AiohttpServer) -> None:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"detail": "bad token"}, status=401)

    app = web.Application()
    app.router.add_get("/ws/scoreboard", handler)
    server = await aiohttp_server(app)
    assert server.port is not None
    with pytest.raises(WsHandshakeError, match=r"401.*bad token"):
        await WsWatcher.connect("127.0.0.1", server.port, "/ws/scoreboard", lambda _, __: None)


# -- WebSocket against a raw server (exact bytes) -----------------------------------------------


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, n | (0x80 if mask else 0))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, 126 | (0x80 if mask else 0), n)
    else:
        header = struct.pack("!BBQ", first, 127 | (0x80 if mask else 0), n)
    if mask:
        key = b"\x01\x02\x03\x04"
        return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + payload


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(fin, opcode, payload) of one client frame, which must be masked."""
    b0, b1 = await reader.readexactly(2)
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4)
    data = await reader.readexactly(n)
    return bool(b0 & 0x80), b0 & 0x0F, bytes(b ^ key[i % 4] for i, b in enumerate(data))


async def upgrade(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, accept: bytes | None = None
) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    right = base64.b64encode(hashlib.sha1(key + guid).digest())  # noqa: S324 - RFC 6455
    writer.write(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + (accept or right) + b"\r\n\r\n"
    )
    await writer.drain()


async def test_ws_fragments_interleaved_ping_and_split_writes() -> None:
    replies: list[tuple[bool, int, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        writer.write(server_frame(0x1, b'{"type":"me",', fin=False))
        writer.write(server_frame(0x9, b"ping-1"))  # control frames may come between fragments
        writer.write(server_frame(0x0, b'"score":', fin=False))
        writer.write(server_frame(0x0, b"5}"))
        await writer.drain()
        replies.append(await read_client_frame(reader))
        medium = server_frame(0x1, b"m" * 300)  # 16-bit length, written a byte at a time
        for i in range(len(medium[:8])):
            writer.write(medium[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.002)
        writer.write(medium[8:] + server_frame(0x1, b"n" * 70000) + server_frame(0x8, b"\x03\xe8"))
        await writer.drain()
        replies.append(await read_client_frame(reader))  # then we close TCP, as servers do

    server, port, handled = await raw_server(handle)
    got: list[bytes] = []
    try:
        watcher = await WsWatcher.connect(
            "127.0.0.1", port, "/", lambda _, payload: got.append(payload)
        )
        assert await asyncio.wait_for(watcher.closed, 5) == (1000, "")
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert got == [b'{"type":"me","score":5}', b"m" * 300, b"n" * 70000]
    assert replies == [(True, 0xA, b"ping-1"), (True, 0x8, b"\x03\xe8")]
    assert watcher.protocol is None


@pytest.mark.parametrize(
    ("frames", "error"),
    [
        (server_frame(0x1, b"hidden", mask=True), "masked"),
        (server_frame(0x0, b"orphan"), "continuation frame without"),
        (server_frame(0x1, b"a", fin=False) + server_frame(0x1, b"b"), "unfinished"),
        (bytes([0xC1, 0x01]) + b"x", "reserved bits"),
        (server_frame(0x9, b"p" * 126), "over 125"),
    ],
)
async def test_ws_protocol_violations_close_with_1002(frames: bytes, error: str) -> None:
    replies: list[tuple[bool, int, bytes]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        writer.write(frames)
        await writer.drain()
        replies.append(await read_client_frame(reader))

    server, port, handled = await raw_server(handle)
    try:
        watcher = await WsWatcher.connect("127.0.0.1", port, "/", lambda _, __: None)
        with pytest.raises(WsProtocolError, match=error):
            await asyncio.wait_for(watcher.closed, 5)
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert replies[0][1] == 0x8
    assert replies[0][2][:2] == b"\x03\xea"  # 1002


async def test_ws_wrong_accept_is_rejected() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer, accept=base64.b64encode(b"x" * 20))
        await reader.read()

    server, port, handled = await raw_server(handle)
    try:
        with pytest.raises(WsHandshakeError, match="Sec-WebSocket-Accept"):
            await WsWatcher.connect("127.0.0.1", port, "/", lambda _, __: None)
        await asyncio.wait_for(handled.wait(), 5)  # the client hung up
    finally:
        server.close()
        await server.wait_closed()


async def test_ws_connection_lost_without_close_frame() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upgrade(reader, writer)
        writer.write(server_frame(0x1, b"last words"))
        await writer.drain()

    server, port, handled = await raw_server(handle)
    got: list[bytes] = []
    try:
        watcher = await WsWatcher.connect("127.0.0.1", port, "/", lambda _, p: got.append(p))
        with pytest.raises(WsClosed):
            await asyncio.wait_for(watcher.closed, 5)
        await asyncio.wait_for(handled.wait(), 5)
    finally:
        server.close()
        await server.wait_closed()
    assert got == [b"last words"]
