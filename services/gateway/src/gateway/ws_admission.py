"""Who may open a WebSocket, decided before the upgrade and before any upstream socket.

Watching is anonymous, so without limits a few hosts could hold a broadcaster replica's every
slot. Three limits, each answered with Retry-After: connections open at once per address bucket
(an IPv4 address or an IPv6 /64) on this gateway process (429), new connections per second per
bucket across every replica (429, GCRA in Redis), and connections open at once on this process
(503: the gateway is full, another replica may not be). The open counts are per process, so
they need no cleanup when a process dies; with N replicas a bucket holds at most N times its
limit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from common.problems import BadRequest, ServiceUnavailable, TooManyRequests
from common.rejections import Rejection


class TooManyWebSockets(TooManyRequests, Rejection):
    """429: this address bucket has its share of connections open already."""

    reason = "ws_per_address"


class GatewayFull(ServiceUnavailable):
    """503: this gateway process holds its maximum of WebSocket connections."""

    def __init__(self) -> None:
        super().__init__(
            "this gateway holds its maximum of live connections; retry shortly",
            headers={"Retry-After": "5"},
        )


class BadUpgrade(BadRequest, Rejection):
    """400: the upgrade request cannot be passed on (a header that is not printable ASCII)."""

    reason = "ws_bad_upgrade"


class WebSocketSlots:
    """Open connections per address bucket and in all, on this process."""

    def __init__(self, *, per_bucket: int, total: int) -> None:
        self._per_bucket = per_bucket
        self._total = total
        self._open: Counter[str] = Counter()
        self.count = 0

    @contextmanager
    def hold(self, bucket: str) -> Iterator[None]:
        """Hold a slot for ``bucket`` while the block runs; 429 or 503 when none is free."""
        if self.count >= self._total:
            raise GatewayFull()
        if self._open[bucket] >= self._per_bucket:
            raise TooManyWebSockets(
                f"at most {self._per_bucket} live connections per address; close one first",
                retry_after_s=5,
            )
        self._open[bucket] += 1
        self.count += 1
        try:
            yield
        finally:
            self.count -= 1
            self._open[bucket] -= 1
            if not self._open[bucket]:
                del self._open[bucket]


def check_upgrade_headers(headers: dict[str, str]) -> None:
    """400 unless every header passed upstream is printable ASCII (RFC 9110 field values;
    anything else cannot be written to the upstream handshake faithfully)."""
    for name, value in headers.items():
        if not (name.isascii() and value.isascii() and value.replace("\t", " ").isprintable()):
            raise BadUpgrade(f"header {name[:40]!r} must be printable ASCII")
