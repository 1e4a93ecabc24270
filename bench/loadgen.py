"""Lean load-generator clients: HTTP/1.1 keep-alive POSTs and WebSocket watchers on bare asyncio.

Benchmarks here run the load generator on the same small machine as the system they measure, so
every CPU millisecond the client spends is taken from the services. aiohttp's client costs about
0.45 ms of CPU per request and a good deal per received WebSocket frame (reader task, message
objects, a ``json.loads`` per frame); these clients sit directly on asyncio transports and do only
what the benchmark needs:

- :class:`HttpClient`: a pool of persistent HTTP/1.1 connections; requests are pre-encoded bytes
  (:func:`encode_post`), responses are parsed incrementally (status line, ``Content-Length``
  body). One request in flight per connection, no pipelining. Chunked responses are refused
  loudly (the gateway always sends ``Content-Length``).
- :class:`WsWatcher`: an RFC 6455 client (handshake with ``Sec-WebSocket-Accept`` check and
  subprotocols, unmasked server frames with 7/16/64-bit lengths, fragmented messages, masked pong
  and close replies; the framing itself is :mod:`common.wsframes`). Text messages go to a
  callback with the time their last bytes arrived (:func:`time.perf_counter` taken first thing
  in ``data_received``); a ``want`` substring skips uninteresting messages without copying or
  decoding them. :meth:`WsWatcher.send_text` sends a message, for protocols that subscribe after
  the upgrade (Centrifugo's connect and subscribe commands).

Standard library and :mod:`common.wsframes` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Final, cast

from common.wsframes import (
    CLOSE_PROTOCOL_ERROR,
    FIN,
    MAX_CONTROL_PAYLOAD,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameError,
    TooLarge,
    accept_key,
    decode_close,
    encode_close,
    encode_frame,
    handshake_key,
    iter_frames,
    upgrade_request,
)

__all__ = [
    "HttpClient",
    "HttpConnectionClosed",
    "HttpProtocolError",
    "WsClosed",
    "WsHandshakeError",
    "WsProtocolError",
    "WsWatcher",
    "encode_post",
]

_MAX_HEAD: Final = 64 * 1024  # response head (status line + headers) size limit


class HttpProtocolError(Exception):
    """The server's response is not something this client handles (or not HTTP at all)."""


class HttpConnectionClosed(ConnectionError):
    """The connection closed (or timed out) before a whole response arrived.

    ``partial`` tells whether any bytes of the response had arrived; if none did, the server
    may or may not have processed the request (this client never retries by itself).
    """

    def __init__(self, message: str, *, partial: bool) -> None:
        super().__init__(message)
        self.partial = partial


def encode_post(
    host: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    *,
    content_type: str = "application/json",
) -> bytes:
    """A complete ``POST`` request (line, headers, body) as one bytes object, ready to send."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    )
    return b"".join((head.encode("latin-1"), body))


def _header(lower_head: bytes, name: bytes) -> bytes | None:
    """The (first) value of header ``name`` in a lower-cased response head, stripped."""
    at = lower_head.find(b"\r\n" + name + b":")
    if at < 0:
        return None
    start = at + len(name) + 3
    end = lower_head.find(b"\r\n", start)
    return lower_head[start : end if end >= 0 else len(lower_head)].strip()


class _HttpConnection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, pool: HttpClient) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.usable = False  # open, idle-able and with no stray bytes
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, float]] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._length = -1  # body length once the head is parsed; -1: head not parsed yet
        self._until_eof = False  # body delimited by the connection's end (no Content-Length)
        self._keep_alive = True
        self._partial = False

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.usable = True
        self._pool._all.add(self)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()  # when the response's last bytes arrived, before any parsing
        if self._waiter is None:  # nothing was asked: the server is not speaking our HTTP
            self._abort()
            return
        self._partial = True
        buf = self._buf
        if self._length < 0:  # the head is not parsed yet
            if buf:  # it came in pieces (rare: heads are small)
                buf += data
                data = bytes(buf)
                buf.clear()
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > _MAX_HEAD:
                    self._fail(HttpProtocolError("response head too large"))
                else:
                    buf += data
                return
            try:
                self._parse_head(data[:end])
            except HttpProtocolError as exc:
                self._fail(exc)
                return
            body = data[end + 4 :]
            if self._until_eof or len(body) < self._length:
                buf += body
                return
        else:
            buf += data
            if self._until_eof or len(buf) < self._length:
                return
            body = bytes(buf)
            buf.clear()
        if len(body) > self._length:  # bytes we did not ask for: do not reuse this connection
            self._keep_alive = False
            body = body[: self._length]
        self._finish((self._status, body, now))

    def eof_received(self) -> bool | None:
        self.usable = False
        return None  # let the transport close itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.usable = False
        if self._waiter is not None:
            if self._until_eof and self._length >= 0 and exc is None:
                self._finish((self._status, bytes(self._buf), time.perf_counter()))
            else:
                reason = f": {exc}" if exc else ""
                self._finish(
                    HttpConnectionClosed(
                        "connection closed before the whole response" + reason,
                        partial=self._partial,
                    )
                )
        self._pool._lost(self)

    # -- request -----------------------------------------------------------------------------

    def start(self, raw: bytes, timeout: float | None) -> asyncio.Future[tuple[int, bytes, float]]:
        """Write ``raw``; the future gets (status, body, perf_counter at the response's end)."""
        assert self.transport is not None
        assert self._waiter is None
        waiter = self._loop.create_future()
        self._waiter = waiter
        self._status, self._length, self._until_eof, self._partial = 0, -1, False, False
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._timed_out)
        self.transport.write(raw)
        return waiter

    def _parse_head(self, head: bytes) -> None:
        """Status, Content-Length and Connection of a response head (without its CRLFCRLF)."""
        lower = head.lower()
        if not lower.startswith(b"http/1.") or len(head) < 12 or head[12:13] not in (b" ", b""):
            raise HttpProtocolError(f"not an HTTP/1.x status line: {head[:80]!r}")
        try:
            status = int(head[9:12])
        except ValueError:
            raise HttpProtocolError(f"bad status line: {head[:80]!r}") from None
        if status < 200:
            raise HttpProtocolError(f"unexpected interim response {status} (nothing asked for it)")
        coding = _header(lower, b"transfer-encoding")
        if coding is not None:
            raise HttpProtocolError(
                f"Transfer-Encoding {coding.decode(errors='replace')!r} is not supported by "
                "this client: the server must answer with Content-Length"
            )
        keep_alive = lower.startswith(b"http/1.1")
        connection = _header(lower, b"connection")
        if connection is not None:
            if b"close" in connection:
                keep_alive = False
            elif b"keep-alive" in connection:
                keep_alive = True
        value = _header(lower, b"content-length")
        length = -1
        if value is not None:
            try:
                length = int(value)
            except ValueError:
                raise HttpProtocolError(f"bad Content-Length: {value!r}") from None
        if status in (204, 304):
            length = 0
        self._status, self._keep_alive, self._until_eof = status, keep_alive, False
        if length < 0:  # HTTP/1.1 without a length: the body runs to the connection's end
            self._until_eof, self._keep_alive, length = True, False, 0
        self._length = length

    def _fail(self, exc: HttpProtocolError) -> None:
        self._finish(exc)
        self._abort()

    def _finish(self, result: tuple[int, bytes, float] | BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._keep_alive:
            self.usable = False
            if self.transport is not None:
                self.transport.close()
        if waiter is None or waiter.done():
            return
        if isinstance(result, BaseException):
            self.usable = False
            waiter.set_exception(result)
        else:
            waiter.set_result(result)

    def _timed_out(self) -> None:
        self._timer = None
        self._finish(HttpConnectionClosed("timed out waiting for the response", partial=True))
        self._abort()

    def _abort(self) -> None:
        self.usable = False
        if self.transport is not None:
            self.transport.abort()


class HttpClient:
    """A small pool of persistent HTTP/1.1 connections to one ``host:port``.

    Connections are taken from an idle list (most recently used first); a new one is opened when
    none is idle and fewer than ``max_connections`` exist, otherwise the caller waits for one to
    come back. A connection whose server closed it, or that answered ``Connection: close``, is
    dropped. Errors are raised, never retried: :class:`HttpConnectionClosed` (with ``partial``),
    :class:`HttpProtocolError`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int = 64,
        timeout: float | None = 60.0,
    ) -> None:
        self.host, self.port = host, port
        self.authority = f"{host}:{port}"
        self.max_connections = max_connections
        self.timeout = timeout
        self.connections_opened = 0
        self._idle: list[_HttpConnection] = []
        self._connecting = 0  # connections being opened (the open ones are in ``_all``)
        self._waiters: deque[asyncio.Future[_HttpConnection | None]] = deque()
        self._all: set[_HttpConnection] = set()
        self._closed = False

    def encode_post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> bytes:
        """A pre-encoded POST to this client's host (see :func:`encode_post`)."""
        return encode_post(self.authority, path, body, headers)

    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``path``: (status, response body)."""
        status, data, _ = await self.send_timed(self.encode_post(path, body, headers))
        return status, data

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """Send one pre-encoded request: (status, response body)."""
        status, data, _ = await self.send_timed(raw)
        return status, data

    async def send_timed(self, raw: bytes) -> tuple[int, bytes, float]:
        """Like :meth:`send`, plus the :func:`time.perf_counter` at which the response ended.

        The time is taken in ``data_received``, before this coroutine is resumed, so it does not
        include the event loop's scheduling delay.
        """
        conn = await self._acquire()
        try:
            return await conn.start(raw, self.timeout)
        except BaseException:
            conn._abort()  # cancelled or failed mid-exchange: the connection's state is unknown
            raise
        finally:
            self._release(conn)

    async def close(self) -> None:
        """Close every connection; waiters get :class:`HttpConnectionClosed`."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(HttpConnectionClosed("client closed", partial=False))
        self._idle.clear()
        conns = list(self._all)
        for conn in conns:
            if conn.transport is not None:
                conn.transport.close()
        for _ in range(100):  # let connection_lost run (no ResourceWarnings)
            if not self._all:
                break
            await asyncio.sleep(0.01)

    # -- pool --------------------------------------------------------------------------------

    async def _acquire(self) -> _HttpConnection:
        while True:
            if self._closed:
                raise HttpConnectionClosed("client closed", partial=False)
            while self._idle:
                conn = self._idle.pop()
                if conn.usable:
                    return conn
            if len(self._all) + self._connecting < self.max_connections:
                self._connecting += 1
                try:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        lambda: _HttpConnection(self), self.host, self.port
                    )
                except BaseException:
                    self._wake(None)
                    raise
                finally:
                    self._connecting -= 1
                self.connections_opened += 1
                if conn.usable:
                    return conn
                continue  # lost already (its slot is free again)
            waiter: asyncio.Future[_HttpConnection | None] = (
                asyncio.get_running_loop().create_future()
            )
            self._waiters.append(waiter)
            try:
                got = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()  # handed over just as we were cancelled: pass on
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._wake(None)
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            if got is not None and got.usable:
                return got
            # None: a slot freed up (a connection closed); loop to open one

    def _release(self, conn: _HttpConnection) -> None:
        if not conn.usable or self._closed:
            return  # connection_lost (now or soon) frees its slot
        if not self._wake(conn):
            self._idle.append(conn)

    def _wake(self, conn: _HttpConnection | None) -> bool:
        """Hand ``conn`` (or a free slot: None) to the first live waiter; False if none."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        return False

    def _lost(self, conn: _HttpConnection) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)
        self._wake(None)


# -- WebSocket -------------------------------------------------------------------------------

_FIN_TEXT: Final = FIN | OP_TEXT


class WsHandshakeError(ConnectionError):
    """The upgrade failed: not a 101, or a 101 that does not follow RFC 6455."""


class WsProtocolError(Exception):
    """The server broke RFC 6455 (masked frame, reserved bits, bad fragmentation, ...)."""


class WsClosed(ConnectionError):
    """The connection ended without a close handshake."""


class WsWatcher(asyncio.Protocol):
    """A minimal WebSocket client that watches a server's text messages.

    Create with :meth:`connect`. ``on_text(arrived, payload)`` runs for every complete text
    message whose payload contains ``want`` (every one if ``want`` is None); ``arrived`` is the
    :func:`time.perf_counter` at the start of the ``data_received`` call that completed it.
    Pings are answered with pongs; a close from the server is answered and ends the watcher
    (:attr:`closed` resolves to ``(code, reason)``, code None if the frame had none). Binary
    messages are counted and dropped. Protocol violations close with 1002 and resolve
    :attr:`closed` with :class:`WsProtocolError`.
    """

    def __init__(
        self,
        on_text: Callable[[float, bytes], None],
        *,
        host: str,
        path: str,
        protocols: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        want: bytes | None = None,
        max_message: int = 16 * 1024 * 1024,
        close_timeout: float = 5.0,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[tuple[int | None, str]] = loop.create_future()
        self.protocol: str | None = None  # the subprotocol the server picked
        self.messages = 0  # complete text messages received (before the ``want`` filter)
        self.frames = 0
        self._on_text = on_text
        self._want = want
        self._max = max_message
        self._close_timeout = close_timeout
        self._protocols = tuple(protocols)
        self._key = handshake_key()
        self._request = upgrade_request(host, path, self._key, headers, self._protocols)
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._fragments: list[bytes] | None = None  # a fragmented message in progress
        self._fragment_opcode = 0
        self._fragment_size = 0
        self._closing = False  # we sent a close frame
        self._open = False  # upgraded and not closed: one attribute for the hot path to test
        self._close_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        path: str,
        on_text: Callable[[float, bytes], None],
        *,
        protocols: Iterable[str] = (),
        headers: Mapping[str, str] | None = None,
        want: bytes | None = None,
        handshake_timeout: float = 10.0,
    ) -> WsWatcher:
        """Connect and upgrade; raises :class:`WsHandshakeError` unless the server said 101."""
        loop = asyncio.get_running_loop()

        def factory() -> WsWatcher:
            return cls(
                on_text,
                host=f"{host}:{port}",
                path=path,
                protocols=protocols,
                headers=headers,
                want=want,
            )

        async with asyncio.timeout(handshake_timeout):
            transport, watcher = await loop.create_connection(factory, host, port)
            try:
                await watcher.upgraded
            except BaseException:
                transport.abort()
                raise
        return watcher

    def send_text(self, payload: bytes) -> None:
        """Send one text message (a masked frame), e.g. a protocol's subscribe command.

        Raises :class:`WsClosed` once the watcher is closed or closing.
        """
        if not self._open or self._closing or self._transport is None:
            raise WsClosed("the connection is not open")
        self._transport.write(encode_frame(OP_TEXT, payload, mask=True))

    async def close(self, code: int = 1000, reason: str = "") -> tuple[int | None, str]:
        """Start the close handshake (if not started); wait for the server's close frame.

        Returns the server's (code, reason); raises :class:`WsClosed` if the connection ended
        without one (the server did not answer within ``close_timeout`` and was dropped).
        """
        if not self.closed.done() and not self._closing:
            self._send_close(code, reason)
        return await asyncio.shield(self.closed)

    def abort(self) -> None:
        """Drop the connection without a close handshake."""
        if self._transport is not None:
            self._transport.abort()

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        buf = self._buf
        try:
            if not self._open:
                if self.closed.done():
                    return  # after a close frame or a protocol error nothing more is read
                buf += data
                if not self._handshake() or not buf:
                    return
                data = bytes(buf)
                buf.clear()
            elif buf:  # a frame came in pieces: parse bytes, whose slices are payloads as they are
                data = b"".join((buf, data))
                buf.clear()
            used = 0
            # The frames, handled here rather than in a method: this runs for every read.
            for first, start, end in iter_frames(data, max_size=self._max):
                used = end
                self.frames += 1
                if first == _FIN_TEXT and self._fragments is None:  # common: a whole text message
                    self.messages += 1
                    want = self._want
                    if want is None or data.find(want, start, end) >= 0:
                        self._on_text(now, data[start:end])
                else:
                    self._frame(first & FIN, first & 0x0F, data[start:end], now)
                    if not self._open:  # a close frame or a protocol error: read no further
                        break
            if used < len(data):
                buf += data[used:]
        except WsProtocolError as exc:
            self._fail(exc, CLOSE_PROTOCOL_ERROR)
        except FrameError as exc:  # bad framing (1002) or too big (1009)
            self._fail(WsProtocolError(str(exc)), exc.close_code)
        except WsHandshakeError as exc:
            if not self.upgraded.done():
                self.upgraded.set_exception(exc)
            self._settle(exc)
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self.upgraded.done():
            self.upgraded.set_exception(
                WsHandshakeError(f"connection closed during the upgrade: {exc or 'EOF'}")
            )
        self._settle(WsClosed(f"connection lost without a close frame: {exc or 'EOF'}"))

    # -- internals ---------------------------------------------------------------------------

    def _handshake(self) -> bool:
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > _MAX_HEAD:
                raise WsHandshakeError("upgrade response head too large")
            return False
        head = bytes(buf[:end])
        lines = head.split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 101"):
            raise WsHandshakeError(
                f"upgrade refused: {lines[0].decode(errors='replace')} "
                f"{bytes(buf[end + 4 : end + 404]).decode(errors='replace')}".strip()
            )
        del buf[: end + 4]
        fields: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            fields[key] = (fields[key] + b", " + value.strip()) if key in fields else value.strip()
        if fields.get(b"upgrade", b"").lower() != b"websocket":
            raise WsHandshakeError(f"101 without 'Upgrade: websocket': {fields.get(b'upgrade')!r}")
        connection = [t.strip() for t in fields.get(b"connection", b"").lower().split(b",")]
        if b"upgrade" not in connection:
            raise WsHandshakeError("101 without 'Connection: Upgrade'")
        if fields.get(b"sec-websocket-accept") != accept_key(self._key):
            raise WsHandshakeError(
                f"wrong Sec-WebSocket-Accept {fields.get(b'sec-websocket-accept')!r}"
            )
        if b"sec-websocket-extensions" in fields:
            extensions = fields[b"sec-websocket-extensions"]
            raise WsHandshakeError(f"server enabled extensions nobody asked for: {extensions!r}")
        chosen = fields.get(b"sec-websocket-protocol")
        if chosen is not None:
            picked = chosen.decode("latin-1")
            if picked not in self._protocols:
                raise WsHandshakeError(f"server picked subprotocol {picked!r}, not one offered")
            self.protocol = picked
        self.upgraded.set_result(None)
        self._open = True
        return True

    def _frame(self, fin: int, opcode: int, payload: bytes, now: float) -> None:
        if opcode >= OP_CLOSE:  # control frames: never fragmented, at most 125 bytes
            if not fin or len(payload) > MAX_CONTROL_PAYLOAD:
                raise WsProtocolError(f"control frame {opcode:#x} fragmented or over 125 bytes")
            if opcode == OP_PING:
                if not self._closing and self._transport is not None:
                    self._transport.write(encode_frame(OP_PONG, payload, mask=True))
            elif opcode == OP_CLOSE:
                self._close_received(payload)
            elif opcode != OP_PONG:
                raise WsProtocolError(f"unknown control opcode {opcode:#x}")
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise WsProtocolError("continuation frame without a message to continue")
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if self._fragment_size > self._max:
                raise TooLarge(f"message over the {self._max} byte limit")
            if fin:
                message = b"".join(self._fragments)
                self._fragments = None
                self._message(self._fragment_opcode, message, now)
            return
        if opcode not in (OP_TEXT, OP_BINARY):
            raise WsProtocolError(f"unknown data opcode {opcode:#x}")
        if self._fragments is not None:
            raise WsProtocolError("new data frame while a fragmented message is unfinished")
        if fin:
            self._message(opcode, payload, now)
        else:
            self._fragments, self._fragment_opcode = [payload], opcode
            self._fragment_size = len(payload)

    def _message(self, opcode: int, payload: bytes, now: float) -> None:
        if opcode != OP_TEXT:
            return
        self.messages += 1
        if self._want is None or self._want in payload:
            self._on_text(now, payload)

    def _close_received(self, payload: bytes) -> None:
        if len(payload) == 1:
            raise WsProtocolError("close frame with a 1-byte payload")
        code, reason = decode_close(payload)
        if not self._closing and self._transport is not None:
            # Echo the code (RFC 6455 5.5.1); an empty close is answered with an empty one.
            self._closing = True
            self._transport.write(encode_frame(OP_CLOSE, payload[:2], mask=True))
        self._settle((code, reason))
        self._end_soon()

    def _send_close(self, code: int, reason: str) -> None:
        if self._transport is None or self._closing:
            return
        self._closing = True
        self._transport.write(encode_frame(OP_CLOSE, encode_close(code, reason), mask=True))
        # Wait for the server's close frame and its closing the TCP connection; not forever.
        self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    def _end_soon(self) -> None:
        # The server closes TCP after the close handshake; drop it ourselves if it does not.
        if self._close_timer is not None:
            self._close_timer.cancel()
        self._close_timer = self._loop.call_later(self._close_timeout, self.abort)

    def _fail(self, exc: WsProtocolError, code: int) -> None:
        self._send_close(code, str(exc)[:100])
        self._settle(exc)
        self._end_soon()

    def _settle(self, result: tuple[int | None, str] | BaseException) -> None:
        self._open = False
        if self.closed.done():
            return
        if isinstance(result, BaseException):
            self.closed.set_exception(result)
            self.closed.exception()  # retrieved: no "never retrieved" warning if nobody waits
        else:
            self.closed.set_result(result)
