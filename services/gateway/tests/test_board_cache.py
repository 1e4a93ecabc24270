"""The board micro-cache's rules (pure logic, a hand-driven clock): kept for the TTL, one
upstream request per URL at a time, only 200 and 404 kept, bounded."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from gateway.board_cache import BoardCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Upstream:
    """Counts requests; answers ``status`` with a body naming the request's number."""

    def __init__(self, status: int = 200, delay: float = 0.0) -> None:
        self.calls = 0
        self.status = status
        self.delay = delay

    async def fetch(self) -> web.Response:
        self.calls += 1
        n = self.calls
        await asyncio.sleep(self.delay)
        return web.Response(
            status=self.status,
            body=f'{{"n":{n}}}'.encode(),
            headers={"Content-Type": "application/json", "X-Request-ID": f"req-{n}"},
        )


def _cache(ttl: float = 0.1, **kw: int) -> tuple[BoardCache, Clock, Counter]:
    clock = Clock()
    counter = Counter("cache", "test", ["result"], registry=CollectorRegistry())
    return BoardCache(ttl, counter, clock=clock, **kw), clock, counter


def _count(counter: Counter, result: str) -> float:
    return float(counter.labels(result)._value.get())


async def test_an_answer_is_kept_for_the_ttl_then_asked_again() -> None:
    cache, clock, counter = _cache(ttl=0.1)
    up = Upstream()
    first = await cache.get("/top", up.fetch)
    clock.now += 0.099
    second = await cache.get("/top", up.fetch)
    assert (first.body, second.body, up.calls) == (b'{"n":1}', b'{"n":1}', 1)
    assert second is not first  # a response of its own for each request
    assert "X-Request-ID" not in second.headers  # per response: the middleware sets its own
    assert second.headers["Content-Type"].startswith("application/json")
    clock.now += 0.002
    third = await cache.get("/top", up.fetch)
    assert (third.body, up.calls) == (b'{"n":2}', 2)
    assert (_count(counter, "hit"), _count(counter, "miss")) == (1, 2)


async def test_urls_are_kept_apart() -> None:
    cache, _, _ = _cache()
    up = Upstream()
    await cache.get("/top?limit=10", up.fetch)
    await cache.get("/top?limit=5", up.fetch)
    assert up.calls == 2


async def test_concurrent_misses_share_one_upstream_request() -> None:
    cache, _, counter = _cache()
    up = Upstream(delay=0.05)
    answers = await asyncio.gather(*(cache.get("/top", up.fetch) for _ in range(20)))
    assert up.calls == 1
    assert {a.body for a in answers} == {b'{"n":1}'}
    assert (_count(counter, "miss"), _count(counter, "shared")) == (1, 19)


async def test_a_client_that_goes_away_does_not_cancel_the_others_answer() -> None:
    cache, _, _ = _cache()
    up = Upstream(delay=0.05)
    first = asyncio.ensure_future(cache.get("/top", up.fetch))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.get("/top", up.fetch))
    await asyncio.sleep(0.01)
    first.cancel()
    assert (await second).body == b'{"n":1}'
    assert up.calls == 1


@pytest.mark.parametrize("status", [200, 404])
async def test_200_and_404_are_kept(status: int) -> None:
    cache, _, _ = _cache()
    up = Upstream(status=status)
    for _ in range(3):
        assert (await cache.get("/users/x", up.fetch)).status == status
    assert up.calls == 1


@pytest.mark.parametrize("status", [400, 429, 503])
async def test_other_answers_are_not_kept(status: int) -> None:
    cache, _, _ = _cache()
    up = Upstream(status=status)
    for _ in range(3):
        assert (await cache.get("/top", up.fetch)).status == status
    assert up.calls == 3


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    cache, _, _ = _cache()
    calls = 0

    async def failing() -> web.Response:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        raise web.HTTPServiceUnavailable()

    results = await asyncio.gather(
        *(cache.get("/top", failing) for _ in range(5)), return_exceptions=True
    )
    assert all(isinstance(r, web.HTTPServiceUnavailable) for r in results)
    assert calls == 1
    with pytest.raises(web.HTTPServiceUnavailable):
        await cache.get("/top", failing)
    assert calls == 2


async def test_at_most_max_entries_urls_are_kept() -> None:
    cache, _, _ = _cache(max_entries=2)
    up = Upstream()
    for url in ("/a", "/b", "/c"):
        await cache.get(url, up.fetch)
    await cache.get("/c", up.fetch)
    await cache.get("/b", up.fetch)
    assert up.calls == 3
    await cache.get("/a", up.fetch)  # the oldest was dropped
    assert up.calls == 4


async def test_ttl_zero_asks_every_time() -> None:
    cache, _, _ = _cache(ttl=0)
    up = Upstream()
    for _ in range(3):
        await cache.get("/top", up.fetch)
    assert up.calls == 3
