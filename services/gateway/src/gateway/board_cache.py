"""A micro-cache of the public board reads: one request to the broadcaster per URL per interval.

Each public read (``GET /api/scoreboard/top``, ``/api/scoreboard/users/{id}``, the
``/api/boards/...`` reads of a named player) used to cost the gateway a proxied HTTP exchange with
the broadcaster: about 0.8 ms of CPU per read (aiohttp's client and server both), so one gateway
process served about 560 reads a second where a bare aiohttp endpoint serves 9,000
(bench/bench_ingest.py). Polling clients ask for the same few URLs, and the answer changes at most
``tick_hz`` times a second on the live path anyway. So each answer is kept for ``ttl_s``
(``SCOREBOARD_BOARD_CACHE_TTL_S``, 100 ms by default: the WebSocket's frame interval) per path
and query, and concurrent misses of one URL share one upstream request (single flight: a burst of
polls after a change reaches the broadcaster once). The answer's ``as_of`` says when the
broadcaster read it.

Kept: 200 and 404 answers (404 is an unknown player, which the broadcaster itself remembers for
10 s). Anything else (400, 429, 503) goes to the client uncached, and the next request asks
again. At most ``max_entries`` URLs are kept; the least recently stored goes first. Each gateway
process has its own cache: replicas may each be up to ``ttl_s`` behind, independently.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import Counter

from common.middlewares import REQUEST_ID

CACHEABLE = frozenset({200, 404})
# Per response, not per answer: set again for each request by the middlewares and aiohttp.
_PER_RESPONSE = frozenset({REQUEST_ID.lower(), "date", "content-length"})


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream answer, as bytes: a fresh web.Response is made from it for each request."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, response: web.Response) -> Answer:
        """Keep what a later request may be answered with."""
        body = response.body
        assert isinstance(body, bytes), "the proxy answers with bytes"
        headers = tuple(
            (k, v) for k, v in response.headers.items() if k.lower() not in _PER_RESPONSE
        )
        return cls(response.status, body, headers)

    def response(self) -> web.Response:
        """A new response with this answer."""
        return web.Response(status=self.status, body=self.body, headers=CIMultiDict(self.headers))


class BoardCache:
    """Answers by URL for ``ttl_s``; one upstream request at a time per URL."""

    def __init__(
        self,
        ttl_s: float,
        counter: Counter,
        *,
        max_entries: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_s
        # Labelled once: ``labels()`` per read was a measurable part of a cached answer's cost.
        self._hits, self._shared, self._misses = (
            counter.labels(outcome) for outcome in ("hit", "shared", "miss")
        )
        self._max = max_entries
        self._clock = clock
        self._answers: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self._flights: dict[str, asyncio.Future[Answer]] = {}

    async def get(self, key: str, fetch: Callable[[], Awaitable[web.Response]]) -> web.Response:
        """The answer for ``key``: kept, shared with a request in flight, or fetched now."""
        if self._ttl <= 0:
            return await fetch()
        kept = self._answers.get(key)
        if kept is not None and kept[0] > self._clock():
            self._hits.inc()
            return kept[1].response()
        flight = self._flights.get(key)
        if flight is not None:
            self._shared.inc()
            # Shielded: a client that goes away must not cancel the others' answer.
            return (await asyncio.shield(flight)).response()
        self._misses.inc()
        flight = asyncio.ensure_future(self._fetch(key, fetch))
        flight.add_done_callback(_retrieve)  # a failure nobody waits for any more is not logged
        self._flights[key] = flight
        return (await asyncio.shield(flight)).response()

    async def _fetch(self, key: str, fetch: Callable[[], Awaitable[web.Response]]) -> Answer:
        try:
            answer = Answer.of(await fetch())
        finally:
            del self._flights[key]
        if answer.status in CACHEABLE:
            self._answers[key] = (self._clock() + self._ttl, answer)
            self._answers.move_to_end(key)
            while len(self._answers) > self._max:
                self._answers.popitem(last=False)
        return answer


def _retrieve(flight: asyncio.Future[Answer]) -> None:
    if not flight.cancelled():
        flight.exception()
