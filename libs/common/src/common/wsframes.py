"""RFC 6455 WebSocket frames: encoding, an incremental parser, close payloads, the handshake keys.

One codec for the WebSocket clients that sit directly on asyncio transports: the gateway's
upstream to the broadcaster (:mod:`gateway.wsupstream`), the load generator's watchers
(``bench.loadgen``) and the test clients (``testkit.broadcaster``).

Written by hand, not with wsproto, because its two busy users cannot afford what wsproto is
built for. wsproto is a whole connection state machine: it decodes every frame into an event, joins
fragments, turns text into ``str`` and may split one message into several events at read
boundaries, so the frames themselves are gone. The gateway passes the broadcaster's frames on
byte for byte and only needs their boundaries; rebuilding them from events means re-encoding
each frame for each watcher, the cost this pass-through exists to avoid. And wsproto 1.3.2 is
slow for a load generator watching 20,000 connections on two cores: 8.7 µs per 1 KB board
frame through its ``Connection`` (6.9 µs through its bare ``FrameProtocol``), 143 µs for a read
of twenty 55-byte frames, where a whole ``data_received`` of ``bench.loadgen`` on this module
takes 1.0 µs and 8.7 µs.

What is here is the part of RFC 6455 that is arithmetic: :func:`iter_frames` finds complete
frames in a buffer and says where their payloads are, without copying them; what a frame means
(answering pings, joining fragments, closing) stays with each connection, whose policies differ.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from typing import Final, NamedTuple

__all__ = [
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "FIN",
    "MAX_CONTROL_PAYLOAD",
    "OP_BINARY",
    "OP_CLOSE",
    "OP_CONTINUATION",
    "OP_PING",
    "OP_PONG",
    "OP_TEXT",
    "Frame",
    "FrameError",
    "MaskingError",
    "ReservedBitsError",
    "TooLarge",
    "accept_key",
    "apply_mask",
    "decode_close",
    "encode_close",
    "encode_frame",
    "handshake_key",
    "iter_frames",
    "read_frames",
    "upgrade_request",
]

OP_CONTINUATION: Final = 0x0
OP_TEXT: Final = 0x1
OP_BINARY: Final = 0x2
OP_CLOSE: Final = 0x8
OP_PING: Final = 0x9
OP_PONG: Final = 0xA

FIN: Final = 0x80  # in a frame's first byte: the last frame of its message
_OPCODE: Final = 0x0F
_MASKED: Final = 0x80  # in a frame's second byte
MAX_CONTROL_PAYLOAD: Final = 125  # control frames carry at most this (section 5.5)
_MAX_CLOSE_REASON: Final = MAX_CONTROL_PAYLOAD - 2

CLOSE_NORMAL: Final = 1000
CLOSE_PROTOCOL_ERROR: Final = 1002
CLOSE_TOO_BIG: Final = 1009

_GUID: Final = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # section 1.3
_NO_LIMIT: Final = 1 << 63  # 64-bit lengths have their top bit clear
_HEAD2: Final = struct.Struct("!BB")
_HEAD4: Final = struct.Struct("!BBH")
_HEAD10: Final = struct.Struct("!BBQ")


class FrameError(Exception):
    """The bytes break RFC 6455 framing; ``close_code`` is the code to close with."""

    close_code: int = CLOSE_PROTOCOL_ERROR


class MaskingError(FrameError):
    """A frame masked the wrong way for its direction (clients mask, servers do not)."""


class ReservedBitsError(FrameError):
    """A frame set RSV bits, which only a negotiated extension may use."""


class TooLarge(FrameError):
    """A frame (or a message) is over the receiver's size limit."""

    close_code = CLOSE_TOO_BIG


class Frame(NamedTuple):
    """One decoded frame: its FIN bit, opcode and (unmasked) payload."""

    fin: bool
    opcode: int
    payload: bytes


# -- encoding -------------------------------------------------------------------------------------


def encode_frame(
    opcode: int, payload: bytes = b"", *, mask: bool = False, fin: bool = True
) -> bytes:
    """One frame; ``mask=True`` for what a client sends (section 5.3), with a fresh random key."""
    first = opcode | FIN if fin else opcode
    n = len(payload)
    mask_bit = _MASKED if mask else 0
    if n < 126:
        head = _HEAD2.pack(first, mask_bit | n)
    elif n < 1 << 16:
        head = _HEAD4.pack(first, mask_bit | 126, n)
    else:
        head = _HEAD10.pack(first, mask_bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return b"".join((head, key, apply_mask(key, payload)))


def apply_mask(key: bytes | bytearray, data: bytes | bytearray | memoryview) -> bytes:
    """``data`` XORed with the 4-byte masking ``key`` (masks and unmasks alike, section 5.3)."""
    n = len(data)
    if not n:
        return b""
    # One big-integer XOR: far cheaper in Python than a loop over the bytes.
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(repeated, "big")).to_bytes(n, "big")


def encode_close(code: int, reason: str | bytes = b"") -> bytes:
    """A close frame's payload: the 2-byte code, then the reason (cut to fit a control frame)."""
    if isinstance(reason, str):
        reason = reason.encode()
    return code.to_bytes(2, "big") + reason[:_MAX_CLOSE_REASON]


def decode_close(payload: bytes | bytearray) -> tuple[int | None, str]:
    """(code, reason) of a close frame's payload; code None if it has none (section 7.1.5).

    A 1-byte payload is malformed; it reads as no code here, and a receiver that refuses it
    checks its length itself.
    """
    if len(payload) < 2:
        return None, ""
    return (payload[0] << 8) | payload[1], bytes(payload[2:]).decode("utf-8", "replace")


# -- parsing --------------------------------------------------------------------------------------


def iter_frames(
    buf: bytes | bytearray,
    pos: int = 0,
    *,
    masked: bool = False,
    max_size: int = _NO_LIMIT,
    reserved_bits: bool = False,
) -> Iterator[tuple[int, int, int]]:
    """``(first byte, payload start, payload end)`` of each complete frame in ``buf`` from ``pos``.

    Nothing is copied: the payload is ``buf[start:end]`` (still masked if ``masked``; its key is
    the 4 bytes before ``start``), the frame runs from the previous frame's end (or ``pos``) to
    ``end``, and the last ``end`` yielded is how far the buffer is used up. Iteration stops at the
    first incomplete frame. ``masked`` is the direction's masking (True: frames from a client);
    a frame masked otherwise raises :class:`MaskingError`, one over ``max_size`` bytes
    :class:`TooLarge`, RSV bits :class:`ReservedBitsError` unless ``reserved_bits`` (frames
    only passed on), each as soon as the header shows it.
    """
    size = len(buf)
    flip = 0x80 if masked else 0  # clears the mask bit where it belongs, leaves it where not
    short = 6 if masked else 2  # a short frame's header, with the masking key if any
    # This loop runs for every frame of every connection: few operations, literal constants.
    while size - pos >= 2:
        first = buf[pos]
        n = buf[pos + 1] ^ flip
        if n > 127 or (first & 0x70 and not reserved_bits):
            if n > 127:
                raise MaskingError(
                    "the client sent an unmasked frame"
                    if masked
                    else "the server sent a masked frame"
                )
            raise ReservedBitsError("reserved bits set (no extension was negotiated)")
        if n < 126:
            start = pos + short
        elif n == 126:
            if size - pos < 4:
                return
            n, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + short + 2
        else:
            if size - pos < 10:
                return
            n, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + short + 8
        if n > max_size:
            raise TooLarge(f"frame of {n} bytes, over the {max_size} limit")
        pos = start + n
        if pos > size:
            return
        yield first, start, pos


def read_frames(
    buf: bytearray,
    *,
    masked: bool = False,
    max_size: int = _NO_LIMIT,
    reserved_bits: bool = False,
) -> list[Frame]:
    """Take the complete frames off the front of ``buf`` and return them, payloads unmasked.

    What is left in ``buf`` is the start of the next frame; feed more bytes and call again.
    Checks as in :func:`iter_frames`.
    """
    frames: list[Frame] = []
    used = 0
    for first, start, end in iter_frames(
        buf, masked=masked, max_size=max_size, reserved_bits=reserved_bits
    ):
        payload = apply_mask(buf[start - 4 : start], buf[start:end]) if masked else buf[start:end]
        frames.append(Frame(bool(first & FIN), first & _OPCODE, bytes(payload)))
        used = end
    del buf[:used]
    return frames


# -- the opening handshake ------------------------------------------------------------------------


def handshake_key() -> bytes:
    """A fresh ``Sec-WebSocket-Key``: 16 random bytes, base64 (section 4.1)."""
    return base64.b64encode(os.urandom(16))


def accept_key(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server answers ``key`` with (section 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())  # noqa: S324 - RFC 6455


def upgrade_request(
    host: str,
    path: str,
    key: bytes,
    headers: Mapping[str, str] | None = None,
    protocols: Iterable[str] = (),
) -> bytes:
    """A client's upgrade request (section 4.1), offering ``protocols`` if any."""
    offered = ", ".join(protocols)
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
        *([f"Sec-WebSocket-Protocol: {offered}"] if offered else []),
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
