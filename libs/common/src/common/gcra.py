"""GCRA (the generic cell rate algorithm) in Redis: the rate limits of the gateway and auth.

GCRA keeps one number per key, the theoretical arrival time (TAT) of the next request. A request
is allowed when it would not arrive earlier than ``TAT - tolerance``, where
``tolerance = (burst - 1) * interval``; allowing it moves TAT one ``interval`` (``1 / rate``)
later. Several limits are checked and charged together in one script: a request denied by any
limit charges none of them, and the first denying limit (in the order given) is reported. The
clock is Redis's own (``TIME``), so replicas with skewed clocks agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Final

# Times are integer microseconds: they stay exact as Lua doubles (< 2^53) and are written with
# %.0f, because Lua's default number format would round a 16-digit value. A Lua function, so the
# gateway's admission script charges limits with the very same code.
GCRA_LUA_FUNCTION: Final = """
local function gcra(keys, args)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tats = {}
  for i, key in ipairs(keys) do
    local interval = tonumber(args[2 * i - 1])
    local tolerance = tonumber(args[2 * i])
    local tat = tonumber(redis.call('GET', key) or now)
    if tat < now then tat = now end
    local wait = tat - tolerance - now
    if wait > 0 then
      return i, string.format('%.0f', wait)
    end
    tats[i] = tat + interval
  end
  for i, key in ipairs(keys) do
    local ttl_ms = math.ceil((tats[i] - now) / 1000) + 1
    redis.call('SET', key, string.format('%.0f', tats[i]), 'PX', ttl_ms)
  end
  return 0, '0'
end
"""

# KEYS: one per limit; ARGV: (interval, tolerance) per key. Returns {0 or the 1-based denying
# limit, the wait in microseconds}.
GCRA_LUA: Final = (
    GCRA_LUA_FUNCTION
    + """
local denied, wait = gcra(KEYS, ARGV)
return {denied, wait}
"""
)


@dataclass(frozen=True)
class Rate:
    """A sustained rate (requests per second) with a burst allowance."""

    per_second: float
    burst: int

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate needs per_second > 0 and burst >= 1")

    @property
    def interval_us(self) -> int:
        """Microseconds between requests at the sustained rate."""
        return max(1, round(1_000_000 / self.per_second))

    @cached_property
    def script_args(self) -> tuple[int, int]:
        """The script's (interval, tolerance) for this rate, in microseconds (computed once: the
        gateway passes them with every limited request)."""
        return self.interval_us, self.interval_us * (self.burst - 1)
