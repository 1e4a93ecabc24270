"""Registration throttling: per address bucket and globally, checked before any hashing.

A registration costs an argon2id hash, so a flood of them is a flood of CPU. Two GCRA limits
(keys ``P signup:addr:{bucket}`` and ``P signup:global``) are checked and charged together in one
Lua script, shared by every replica: a registration refused by either charges neither, and gets
429 with the wait until it would pass. Each key holds one number, the theoretical arrival time
of the next registration; the clock is Redis's own (``TIME``), so replicas with skewed clocks
agree: the algorithm of :mod:`common.gcra`, as the gateway's rate limits use it.

A refused registration costs one Redis round trip and nothing else; one that passes may still
wait for a hashing worker, of which it may only use its share (see :mod:`auth.passwords`).
"""

from __future__ import annotations

import redis.asyncio as aioredis

from auth.security import SecurityRejection
from common.addresses import address_bucket
from common.gcra import GCRA_LUA, Rate
from common.problems import TooManyRequests

SCOPES = ("address", "global")


class RegistrationThrottled(SecurityRejection, TooManyRequests):
    """429: too many registrations from this address bucket, or from everyone."""

    def __init__(self, scope: str, retry_after_s: float, username: str) -> None:
        super().__init__(
            "too many registrations; retry after the time in Retry-After",
            retry_after_s=retry_after_s,
        )
        self.reason = f"throttled_{scope}"
        self.username = username


class SignupThrottle:
    """Admits a registration, or raises :class:`RegistrationThrottled`; one round trip."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, per_address: Rate, global_: Rate
    ) -> None:
        self._prefix = prefix
        self._args = [*per_address.script_args, *global_.script_args]
        self._admit = redis.register_script(GCRA_LUA)

    async def admit(self, username: str, address: str) -> None:
        """Charge both limits, or neither and raise when either is spent."""
        keys = [
            f"{self._prefix}signup:addr:{address_bucket(address)}",
            f"{self._prefix}signup:global",
        ]
        denied, wait_us = await self._admit(keys=keys, args=self._args)
        if int(denied):
            raise RegistrationThrottled(SCOPES[int(denied) - 1], int(wait_us) / 1e6, username)
