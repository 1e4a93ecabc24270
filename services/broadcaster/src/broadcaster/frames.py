"""Server-to-client WebSocket frames, serialised once and written as the same bytes to everyone.

Written by hand (RFC 6455 section 5.2, a few lines) because aiohttp's writer frames every message
per connection and may await a slow client's drain; the fan-out instead builds one unmasked,
uncompressed text frame per board change and hands those bytes to each socket's transport.
Connections are opened with compression off, so the same bytes are valid on every one of them.

Close codes the broadcaster uses:

- 1008 policy violation: the client sent more than ``ws_inbound_burst`` messages at once.
- 1009 message too big: a client message over ``ws_max_message_bytes`` (aiohttp's check).
- 1011 internal error: neither Redis nor PostgreSQL could give the first snapshot.
- 1012 service restart: the replica is shutting down; reconnect (to another replica).
- 1013 try again later: the replica is at ``max_connections``.
- 4008 too slow: the client stayed unable to receive (its unsent data above
  ``ws_slow_buffer_bytes``) for ``ws_stuck_timeout_s``; reconnect and read faster.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from typing import Final

from broadcaster.standings import Entry

CLOSE_TOO_SLOW: Final = 4008
CLOSE_POLICY: Final = 1008
CLOSE_UNAVAILABLE: Final = 1011
CLOSE_RESTART: Final = 1012
CLOSE_TRY_LATER: Final = 1013

_FIN_TEXT: Final = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying ``payload`` (UTF-8 JSON)."""
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", _FIN_TEXT, n)
    elif n < 1 << 16:
        header = struct.pack("!BBH", _FIN_TEXT, 126, n)
    else:
        header = struct.pack("!BBQ", _FIN_TEXT, 127, n)
    return header + payload


def _dumps(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def top_frame(version: int, entries: Iterable[Entry]) -> bytes:
    """``{"type":"top","version":V,"entries":[...]}`` as a ready-to-write frame."""
    doc = {"type": "top", "version": version, "entries": [e.as_json() for e in entries]}
    return text_frame(_dumps(doc))


def me_frame(version: int, score: int, rank: int | None) -> bytes:
    """``{"type":"me","version":V,"score":S,"rank":R}`` (rank null: not on the board yet)."""
    return text_frame(_dumps({"type": "me", "version": version, "score": score, "rank": rank}))
