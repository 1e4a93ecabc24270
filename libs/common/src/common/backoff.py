"""Pacing retries of transient failures: exponential backoff with jitter, interruptible waits.

The one retry pacing of every service loop (consumers, relay, producers, listeners). Written here
rather than taken from tenacity: tenacity retries one call, while these loops run for the life of
the process, reset after each success, log each failure with their own context, and must wake at
once when the service stops (:func:`wait_or_stop`); what they need is the delay sequence alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Delays that double from ``base_s`` up to ``cap_s``, each drawn from its upper half.

    Drawing from ``[d/2, d]`` (not ``[0, d]``) keeps replicas from retrying in lockstep while
    guaranteeing a real pause: a failing dependency never sees a busy loop.
    """

    base_s: float
    cap_s: float
    attempt: int = 0

    def next_delay(self) -> float:
        """The next pause, in seconds."""
        ceiling = min(self.cap_s, self.base_s * 2**self.attempt)
        self.attempt += 1
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not a secret

    async def sleep(self) -> None:
        """Pause for the next delay."""
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        """Start again from ``base_s`` (after a success)."""
        self.attempt = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep ``seconds`` unless ``stop`` is set first; returns whether it was set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
