"""Registration throttling: per address bucket and globally, checked before any hashing.

A registration costs an argon2id hash, so a flood of them is a flood of CPU. Two GCRA limits
(keys ``P signup:addr:{bucket}`` and ``P signup:global``) are checked and charged together in one
Lua script, shared by every replica: a registration refused by either charges neither, and gets
429 with the wait until it would pass. Each key holds one number, the theoretical arrival time
of the next registration; the clock is Redis's own (``TIME``), so replicas with skewed clocks
agree. The gateway has the same algorithm for its rate limits (``gateway/ratelimit.py``); it is
written here again because auth may not import the gateway.

A refused registration costs one Redis round trip and nothing else; one that passes may still
wait for a hashing worker, of which it may only use its share (see :mod:`auth.passwords`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from auth.login_throttle import address_bucket
from auth.security import SecurityRejection
from common.problems import TooManyRequests

SCOPES = ("address", "global")

# Times are integer microseconds (exact as Lua doubles below 2^53), written with %.0f because
# Lua's default format would round a 16-digit number. ARGV: interval and tolerance per key.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tats = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local wait = tat - tolerance - now
  if wait > 0 then
    return {i, string.format('%.0f', wait)}
  end
  tats[i] = tat + interval
end
for i, key in ipairs(KEYS) do
  local ttl_ms = math.ceil((tats[i] - now) / 1000) + 1
  redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl_ms)
end
return {0, '0'}
"""


class RegistrationThrottled(SecurityRejection, TooManyRequests):
    """429: too many registrations from this address bucket, or from everyone."""

    def __init__(self, scope: str, retry_after_s: float, username: str) -> None:
        super().__init__(
            "too many registrations; retry after the time in Retry-After",
            retry_after_s=retry_after_s,
        )
        self.reason = f"throttled_{scope}"
        self.username = username


@dataclass(frozen=True)
class Rate:
    """A sustained rate (registrations per second) with a burst allowance."""

    per_second: float
    burst: int

    def script_args(self) -> tuple[int, int]:
        """GCRA's emission interval and tolerance, in microseconds."""
        interval = max(1, round(1_000_000 / self.per_second))
        return interval, interval * (self.burst - 1)


class SignupThrottle:
    """Admits a registration, or raises :class:`RegistrationThrottled`; one round trip."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, per_address: Rate, global_: Rate
    ) -> None:
        self._prefix = prefix
        self._args = [*per_address.script_args(), *global_.script_args()]
        self._admit = redis.register_script(_ADMIT)

    async def admit(self, username: str, address: str) -> None:
        """Charge both limits, or neither and raise when either is spent."""
        keys = [
            f"{self._prefix}signup:addr:{address_bucket(address)}",
            f"{self._prefix}signup:global",
        ]
        denied, wait_us = await self._admit(keys=keys, args=self._args)
        if int(denied):
            raise RegistrationThrottled(SCOPES[int(denied) - 1], int(wait_us) / 1e6, username)
