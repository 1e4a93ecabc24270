"""Retry pacing: doubling delays with jitter, capped, never zero."""

from __future__ import annotations

import asyncio

from common.backoff import Backoff, wait_or_stop


def test_delays_double_up_to_the_cap_and_never_collapse_to_zero() -> None:
    backoff = Backoff(base_s=0.1, cap_s=1.0)
    delays = [backoff.next_delay() for _ in range(8)]
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]
    for delay, ceiling in zip(delays, ceilings, strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 0.1


async def test_a_stop_interrupts_the_wait() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    async with asyncio.timeout(2):
        assert await wait_or_stop(stop, 30) is True
    assert await wait_or_stop(asyncio.Event(), 0.01) is False
