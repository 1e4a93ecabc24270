"""The gateway's raw WebSocket connection to the broadcaster: its frames reach the client as-is.

The broadcaster encodes each board frame once and writes the same bytes to every connection; a
frame-by-frame proxy would decode and re-encode every one of them again, per watcher, in Python
(it was ~20% of the gateway's CPU at 600 updates/s with 200 watchers). Server-to-client frames
look the same on both hops (unmasked), so :class:`UpstreamSocket` only finds frame boundaries
(:func:`common.wsframes.iter_frames`, which copies nothing) and writes the complete data frames
of each read straight to the client's transport, in one write: the bytes as read when they are
all data frames, else the runs of data frames between control frames. Control
frames are the hop's own: pings are answered here, a close ends the pipe. The client side stays
an aiohttp ``WebSocketResponse`` (handshake, heartbeats, limits on what clients send), whose
frames interleave with ours safely because both sides only ever write whole frames.

Flow control: while the client's write buffer is over ``high_water``, reading from the
broadcaster pauses, so a client that stops reading builds no backlog here; the broadcaster then
sees the backpressure and skips frames for it. Paused for longer than ``stuck_after_s`` means
the client is stuck: the pipe ends with ``stuck`` (the proxy closes it with 4008).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

from common.wsframes import (
    CLOSE_PROTOCOL_ERROR,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    MaskingError,
    TooLarge,
    accept_key,
    decode_close,
    encode_close,
    encode_frame,
    handshake_key,
    iter_frames,
    upgrade_request,
)

_MAX_HEAD: Final = 16 * 1024
_MAX_FRAME: Final = 1024 * 1024
_CLOSE_WAIT_S: Final = 2.0


class UpstreamHandshakeError(Exception):
    """The broadcaster did not accept the WebSocket upgrade."""


@dataclass(frozen=True)
class Ended:
    """How one direction of a WebSocket pipe ended."""

    code: int | None = None
    reason: str = ""
    stuck: bool = False


class UpstreamSocket(asyncio.Protocol):
    """One WebSocket connection to the broadcaster, piped into a client's transport."""

    def __init__(self, *, high_water: int, stuck_after_s: float) -> None:
        self._high_water = high_water
        self._stuck_after = stuck_after_s
        self._transport: asyncio.Transport | None = None
        self._client: asyncio.WriteTransport | None = None
        self._buf = bytearray()
        self._early: list[bytes | bytearray] = []
        self._upgraded = False
        self._paused_at: float | None = None
        self._closing = False
        self._peer_closed = False
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.head: asyncio.Future[bytes] = loop.create_future()
        self.ended: asyncio.Future[Ended] = loop.create_future()

    # -- protocol callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(UpstreamHandshakeError("connection closed during handshake"))
        self._end(Ended())

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if self._upgraded and not buf:  # the common case: the read starts with a frame
            used = self._frames(data)
            if used < len(data):
                buf += data[used:] if used else data
            return
        buf += data
        if not self._upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail("handshake response too large")
                return
            head = bytes(buf[: end + 4])
            del buf[: end + 4]
            self._upgraded = True
            self.head.set_result(head)
        del buf[: self._frames(buf)]

    # -- what the proxy calls -----------------------------------------------------------------

    async def handshake(self, host: str, path: str, headers: Mapping[str, str]) -> None:
        """Send the upgrade request and check the 101 answer (raises on anything else)."""
        assert self._transport is not None
        key = handshake_key()
        self._transport.write(upgrade_request(host, path, key, headers))
        head = await self.head
        status_line, _, rest = head.decode("latin-1").partition("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or parts[1] != "101":
            raise UpstreamHandshakeError(f"upgrade refused: {status_line[:80]}")
        fields = {}
        for line in rest.split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                fields[name.strip().lower()] = value.strip()
        if fields.get("sec-websocket-accept") != accept_key(key).decode():
            raise UpstreamHandshakeError("bad Sec-WebSocket-Accept")
        if fields.get("sec-websocket-extensions"):
            raise UpstreamHandshakeError("unexpected WebSocket extension")

    def attach(self, client: asyncio.WriteTransport) -> None:
        """Start writing frames to ``client`` (frames that arrived before are written first)."""
        self._client = client
        if self._early:
            client.write(b"".join(self._early))
            self._early.clear()
            self._throttle()

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one (masked) frame to the broadcaster."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(encode_frame(opcode, payload, mask=True))

    def close(self, code: int, reason: bytes = b"") -> None:
        """Start the closing handshake: send a close frame, discard what still comes, and drop
        the connection when the broadcaster's close arrives (or after ``_CLOSE_WAIT_S``)."""
        if self._closing or self._transport is None:
            return
        self._closing = True
        self.send(OP_CLOSE, encode_close(code, reason[:120]))
        if self._paused_at is not None:
            self._paused_at = None
            self._transport.resume_reading()
        if self.ended.done() and self._peer_closed:
            self._transport.close()
        else:
            self._loop.call_later(_CLOSE_WAIT_S, self.abort)

    def abort(self) -> None:
        """Drop the connection at once."""
        if self._transport is not None:
            self._transport.abort()

    # -- internals ----------------------------------------------------------------------------

    def _frames(self, data: bytes | bytearray) -> int:
        """Pass on the complete data frames in ``data``; returns how many bytes were used."""
        out: list[bytes | bytearray] = []
        run = at = 0  # data[run:at]: data frames not passed on yet; ``at``: the next frame's start
        try:
            for first, start, end in iter_frames(data, max_size=_MAX_FRAME, reserved_bits=True):
                opcode = first & 0x0F
                if opcode < OP_CLOSE:  # text, binary, continuation: the client's as they are
                    at = end
                    continue
                if at > run:
                    out.append(data[run:at])
                run = at = end
                if opcode == OP_PING:
                    self.send(OP_PONG, bytes(data[start:end]))
                elif opcode == OP_CLOSE:
                    code, reason = decode_close(data[start:end])
                    self._peer_closed = True
                    self._flush(out)
                    self._end(Ended(code=code, reason=reason))
                    if self._closing and self._transport is not None:
                        self._transport.close()
                    return len(data)  # nothing after a close frame is read
        except MaskingError:
            self._fail("masked frame from the broadcaster")
            return len(data)
        except TooLarge:
            self._fail("frame too large")
            return len(data)
        if at > run:  # bytes sliced whole are themselves: a read of data frames is not copied
            out.append(data[run:at])
        self._flush(out)
        return at

    def _flush(self, out: list[bytes | bytearray]) -> None:
        if not out or self._closing:
            return
        if self._client is None:
            self._early.extend(out)
            return
        self._client.write(out[0] if len(out) == 1 else b"".join(out))
        self._throttle()

    def _throttle(self) -> None:
        client, transport = self._client, self._transport
        if client is None or transport is None or self._paused_at is not None:
            return
        if client.get_write_buffer_size() > self._high_water:
            transport.pause_reading()
            self._paused_at = self._loop.time()
            self._loop.call_later(0.05, self._check_paused)

    def _check_paused(self) -> None:
        client, transport, since = self._client, self._transport, self._paused_at
        if client is None or transport is None or since is None or self.ended.done():
            return
        if client.is_closing():
            self._end(Ended())
        elif client.get_write_buffer_size() <= self._high_water // 4:
            self._paused_at = None
            transport.resume_reading()
        elif self._loop.time() - since > self._stuck_after:
            self._end(Ended(stuck=True))
        else:
            self._loop.call_later(0.05, self._check_paused)

    def _fail(self, why: str) -> None:
        if not self.head.done():
            self.head.set_exception(UpstreamHandshakeError(why))
        self._end(Ended(code=CLOSE_PROTOCOL_ERROR, reason=why))
        self.abort()

    def _end(self, ended: Ended) -> None:
        if not self.ended.done():
            self.ended.set_result(ended)
