"""Login throttling that an attacker cannot turn against the account's owner.

Three fixed-window failure counters in Redis, each with its own limit (defaults per 15 minutes):

======================================  =====  ==========================================
key                                     limit  what it stops
======================================  =====  ==========================================
``P login-fail:pair:{bucket}:{name}``       5  one source guessing one account's password
``P login-fail:name:{name}``              100  a botnet guessing one account (backstop)
``P login-fail:addr:{bucket}``             50  one source spraying guesses over many names
======================================  =====  ==========================================

The address bucket is the IPv4 address or the IPv6 /64 (what one host or subscriber holds).
The limit that normally trips is the pair's, so an attacker hammering a name from a few addresses
is refused while its owner, from any other address, still logs in. To lock the owner out through
the name's own limit an attacker needs ``per_name / per_name_and_address`` buckets (20) within
one window, each slowed down as below.

- Every attempt is counted *before* the password is checked, in one Lua script that first
  refuses if any counter is at its limit: concurrent guesses cannot slip past a limit, and the
  check and the count are one atomic step across replicas.
- Before refusing, it slows down: an admitted attempt waits ``base * 2**(k - 1)`` seconds (capped)
  before its password is checked, ``k`` being how far the fullest counter is towards its limit,
  in the pair's steps (the pair's own failures; 1 step per 10 failures of the address, per 20 of
  the name). The wait comes before the check, so a client that gives up early learns nothing.
- A refused attempt is not counted and does not extend a window. A window starts at its first
  failure and ends ``window_s`` later whatever an attacker keeps sending.
- A successful login clears its own pair (the owner's typos from there) and gives back only its
  own attempt on the name and address counters: it never resets what other buckets spent, so an
  owner logging in does not refill an attacker's allowance, and a sprayer's own account cannot
  reset its address counter.
- While a counter is full the password is not even checked, so a 429 never reveals whether a
  guess was right. Unknown names are throttled exactly like real ones (no enumeration).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from auth.security import SecurityRejection
from common.addresses import address_bucket
from common.problems import TooManyRequests

# Scopes in KEYS order; the script's answer names the blocking one by its 1-based index.
SCOPES = ("name_and_address", "name", "address")

# Check every counter, then count in all of them: one atomic step across replicas. Returns
# {blocking scope or 0, its TTL in ms, the counts before this attempt...}.
_ADMIT = """
local window = tonumber(ARGV[#KEYS + 1])
local counts, scope, ttl = {}, 0, 0
for i = 1, #KEYS do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
  if counts[i] >= tonumber(ARGV[i]) then
    local left = redis.call('PTTL', KEYS[i])
    if left < 0 then
      redis.call('PEXPIRE', KEYS[i], window)
      left = window
    end
    if left > ttl then
      scope, ttl = i, left
    end
  end
end
if scope > 0 then
  return {scope, ttl}
end
for i = 1, #KEYS do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], window)
  end
end
return {0, 0, unpack(counts)}
"""

# A success: its own pair is cleared; the name and the address get only this attempt back.
# Only a live counter is decremented (one that expired meanwhile must not come back without a
# TTL), and one that reaches zero is deleted.
_SUCCEED = """
redis.call('DEL', KEYS[1])
for i = 2, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then
    if redis.call('DECR', KEYS[i]) <= 0 then
      redis.call('DEL', KEYS[i])
    end
  end
end
return 0
"""


class LoginThrottled(SecurityRejection, TooManyRequests):
    """429: too many failed logins for this name from here, for this name, or from here."""

    def __init__(self, scope: str, retry_after_s: float, username: str) -> None:
        super().__init__(
            "too many failed logins; retry after the time in Retry-After",
            retry_after_s=retry_after_s,
        )
        self.reason = f"throttled_{scope}"
        self.username = username


def throttle_keys(prefix: str, username: str, address: str) -> tuple[str, str, str]:
    """The Redis keys counting failures of (name, bucket), of the name, and of the bucket."""
    name, bucket = username.lower(), address_bucket(address)
    # The bucket (an IP or a /64, no colon after its prefix length) comes first: unambiguous.
    return (
        f"{prefix}login-fail:pair:{bucket}:{name}",
        f"{prefix}login-fail:name:{name}",
        f"{prefix}login-fail:addr:{bucket}",
    )


@dataclass(frozen=True)
class SlowDown:
    """How long an admitted attempt waits before its password is checked."""

    base_s: float
    max_s: float

    def delay_s(self, counts: tuple[int, ...], limits: tuple[int, ...]) -> float:
        """``base * 2**(k - 1)``, capped; ``k`` = the fullest counter's progress, in pair steps."""
        steps = limits[0]
        k = max(count * steps // limit for count, limit in zip(counts, limits, strict=True))
        if k <= 0 or self.base_s <= 0:
            return 0.0
        return float(min(self.max_s, self.base_s * 2 ** min(k - 1, 62)))


@dataclass(frozen=True)
class Attempt:
    """One admitted login attempt: wait ``delay_s`` before checking it; report a success."""

    keys: tuple[str, str, str]
    delay_s: float


class LoginThrottle:
    """Counts failed logins per (name, address bucket), per name and per bucket."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        per_name_and_address: int,
        per_name: int,
        per_address: int,
        window_s: float,
        slow_down: SlowDown,
    ) -> None:
        self._prefix = prefix
        self._limits = (per_name_and_address, per_name, per_address)
        self._window_ms = max(1, int(window_s * 1000))
        self._slow_down = slow_down
        self._admit = redis.register_script(_ADMIT)
        self._succeed = redis.register_script(_SUCCEED)

    async def admit(self, username: str, address: str) -> Attempt:
        """Count an attempt, or raise :class:`LoginThrottled` (not counted) when over a limit."""
        keys = throttle_keys(self._prefix, username, address)
        answer = await self._admit(keys=list(keys), args=[*self._limits, self._window_ms])
        scope, ttl_ms, *counts = (int(x) for x in answer)
        if scope:
            raise LoginThrottled(SCOPES[scope - 1], ttl_ms / 1000, username)
        return Attempt(keys, self._slow_down.delay_s(tuple(counts), self._limits))

    async def succeeded(self, attempt: Attempt) -> None:
        """The password was right: clear this pair, give this attempt back to name and bucket."""
        await self._succeed(keys=list(attempt.keys))
