"""Login throttling: fixed-window failure counters per username and per client address in Redis.

Design (keys ``P login-fail:name:{lowercased name}`` and ``P login-fail:addr:{address}``):

- Every login attempt is counted *before* the password is checked, in one Lua script that
  first refuses if either counter is at its limit. Counting up front is what keeps concurrent
  guesses from slipping past the limit; a successful login gives its count back.
- A refused attempt is not counted and does not extend the window. The window starts at the
  first failure and ends ``login_fail_window_s`` later whatever an attacker keeps sending, so
  they cannot lock a victim out for longer than one window per burst of failures they spend.
- Defaults: 10 failures per name and 50 per address per 15 minutes. The name limit applies
  from every address (it protects one account from a botnet); the address limit protects all
  accounts from one source. IPv6 clients are counted per /64, which one host usually owns.
- While a name is blocked its password is not even checked, so a 429 never reveals whether a
  guess was right. Unknown names are throttled exactly like real ones (no enumeration).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import redis.asyncio as aioredis

from auth.security import SecurityRejection
from common.problems import TooManyRequests

# Both keys in one script: the check and the count must be one atomic step across replicas.
_ADMIT = """
local limits = {tonumber(ARGV[1]), tonumber(ARGV[2])}
for i = 1, 2 do
  local count = tonumber(redis.call('GET', KEYS[i]) or '0')
  if count >= limits[i] then
    local ttl = redis.call('PTTL', KEYS[i])
    if ttl < 0 then
      redis.call('PEXPIRE', KEYS[i], ARGV[3])
      ttl = tonumber(ARGV[3])
    end
    return {i, ttl}
  end
end
for i = 1, 2 do
  if redis.call('INCR', KEYS[i]) == 1 then
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
  end
end
return {0, 0}
"""

# Only decrement a live counter: a key that expired meanwhile must not come back without a TTL.
_FORGIVE = """
for i = 1, #KEYS do
  if tonumber(redis.call('GET', KEYS[i]) or '0') > 0 then
    redis.call('DECR', KEYS[i])
  end
end
return 0
"""


class LoginThrottled(SecurityRejection, TooManyRequests):
    """429: too many failed logins for this name or from this address."""

    def __init__(self, scope: str, retry_after_s: float, username: str) -> None:
        super().__init__("too many failed logins; try again later", retry_after_s=retry_after_s)
        self.reason = f"throttled_{scope}"
        self.username = username


def address_bucket(address: str) -> str:
    """The unit an address is counted in: the IPv4 address, or the IPv6 /64 network."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def throttle_keys(prefix: str, username: str, address: str) -> tuple[str, str]:
    """The Redis keys counting ``username``'s and ``address``'s failed logins."""
    return (
        f"{prefix}login-fail:name:{username.lower()}",
        f"{prefix}login-fail:addr:{address_bucket(address)}",
    )


@dataclass(frozen=True)
class Attempt:
    """One admitted login attempt; pass it back to :meth:`LoginThrottle.forgive` on success."""

    keys: tuple[str, str]


class LoginThrottle:
    """Counts login attempts per name and address; refuses when either is over its limit."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        *,
        per_name: int,
        per_address: int,
        window_s: float,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._limits = (per_name, per_address)
        self._window_ms = max(1, int(window_s * 1000))
        self._admit = redis.register_script(_ADMIT)
        self._forgive = redis.register_script(_FORGIVE)

    async def admit(self, username: str, address: str) -> Attempt:
        """Count an attempt, or raise :class:`LoginThrottled` (not counted) when over a limit."""
        keys = throttle_keys(self._prefix, username, address)
        blocked, ttl_ms = await self._admit(keys=list(keys), args=[*self._limits, self._window_ms])
        if blocked:
            scope = "name" if int(blocked) == 1 else "address"
            raise LoginThrottled(scope, int(ttl_ms) / 1000, username)
        return Attempt(keys)

    async def forgive(self, attempt: Attempt) -> None:
        """Give a successful login's count back (failures stay counted until the window ends)."""
        await self._forgive(keys=list(attempt.keys))
