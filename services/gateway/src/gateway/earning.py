"""The earning rules: no trick earns a player more than one honest player could earn.

An honest player does one action at a time, each taking at least its type's minimum duration.
The rules, per user (docs/architecture.md, "Earning rules"):

- **Open tickets**: at most ``max_open`` tickets of a type at once (default 1). Opening one more
  replaces the oldest, which can no longer be redeemed: an abandoned ticket never blocks anyone.
- **Ticket pace**: a type's tickets are issued no faster than its minimum duration, so tickets
  opened in parallel cannot be redeemed in a batch.
- **Period caps**: ``per_hour`` / ``per_day`` completions of a type (UTC periods; the default
  catalog's ``daily_login`` is once a day), checked when the ticket is issued and counted when
  the completion is claimed.
- **Points budget**: the points of every type without a period cap, together, accrue no faster
  than the catalog's best sustained rate (``points_budget_per_minute``, by default the best
  type's points per minimum duration), with at most one action's points of slack. Mixing types
  in parallel therefore earns no more than the best type done back to back.

Refusals are 429 with ``Retry-After`` and the problem type :data:`EARNING_PROBLEM`, whose
``earning_rule`` says which rule refused (docs/openapi.yaml). Nothing is charged for a refused
request; a claim released because Kafka did not take the command gives its charge back.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from common.problems import TooManyRequests
from common.rejections import Rejection
from gateway.catalog import ActionSpec, Catalog

EARNING_PROBLEM: Final = "https://scoreboard.dev/problems/earning-limit"

# Lua shared by the ticket script below and the admission script. Times in the budget are Redis
# microseconds (TIME), written with %.0f so they stay exact.
EARNING_LUA_FUNCTIONS: Final = """
local function capped(hour_key, day_key, per_hour, per_day)
  if per_day > 0 and tonumber(redis.call('GET', day_key) or '0') >= per_day then
    return 'period_cap_day'
  end
  if per_hour > 0 and tonumber(redis.call('GET', hour_key) or '0') >= per_hour then
    return 'period_cap_hour'
  end
  return false
end
local function count_caps(hour_key, day_key, per_hour, per_day, hour_ttl_ms, day_ttl_ms)
  if per_day > 0 then
    redis.call('INCR', day_key)
    redis.call('PEXPIRE', day_key, day_ttl_ms)
  end
  if per_hour > 0 then
    redis.call('INCR', hour_key)
    redis.call('PEXPIRE', hour_key, hour_ttl_ms)
  end
end
local function budget(key, interval, burst, cost)
  if cost <= 0 then return 0, false end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * interval
  local wait = new_tat - now - burst * interval
  if wait > 0 then return wait, false end
  return 0, {new_tat, now}
end
local function charge_budget(key, charge)
  if charge then
    local ttl_ms = math.ceil((charge[1] - charge[2]) / 1000) + 1
    redis.call('SET', key, string.format('%.0f', charge[1]), 'PX', ttl_ms)
  end
end
"""

# KEYS: the new ticket, the user's open tickets of the type (sorted set of ticket keys by expiry),
#       the pace marker, the hour and day counters.
# ARGV: ticket JSON, ticket TTL (s), now (ms), expiry (ms), max open, minimum duration (ms),
#       per hour, per day (0: none).
# Returns {'limited', rule, wait} or {'issued', the replaced tickets' keys...}: those left the
# open set here; the caller deletes them (a script touches only the keys it is given, and on a
# Redis Cluster each ticket has a slot of its own).
_ISSUE_LUA: Final = (
    EARNING_LUA_FUNCTIONS
    + """
local rule = capped(KEYS[4], KEYS[5], tonumber(ARGV[7]), tonumber(ARGV[8]))
if rule then return {'limited', rule, 0} end
local min_ms = tonumber(ARGV[6])
if min_ms > 0 then
  local left = redis.call('PTTL', KEYS[3])
  if left > 0 then return {'limited', 'ticket_pace', left} end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local out = {'issued'}
while redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[5]) do
  out[#out + 1] = redis.call('ZPOPMIN', KEYS[2])[1]
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], KEYS[1])
redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[2]) * 1000)
if min_ms > 0 then redis.call('SET', KEYS[3], '1', 'PX', min_ms) end
return out
"""
)

_DETAILS: Final = {
    "ticket_pace": "'{type}' takes at least {min_ms} ms; start the next one after the previous",
    "period_cap_day": "'{type}' can be completed {cap} time(s) per UTC day",
    "period_cap_hour": "'{type}' can be completed {cap} time(s) per hour",
    "points_budget": "points are earned no faster than {rate} per minute; slow down",
}


class EarningLimited(TooManyRequests, Rejection):
    """429: an earning rule refused (``earning_rule`` names it), with ``Retry-After``."""

    type_ = EARNING_PROBLEM

    def __init__(self, rule: str, detail: str, *, retry_after_s: float) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.reason = f"earning_{rule}"
        self.extra = {"earning_rule": rule}


@dataclass(frozen=True)
class Budget:
    """Points per minute for the uncapped types together, with one action's slack."""

    per_minute: int
    burst_points: int

    @property
    def interval_us(self) -> int:
        """Microseconds per point at the sustained rate."""
        return max(1, round(60_000_000 / self.per_minute))

    @classmethod
    def for_catalog(
        cls, catalog: Mapping[str, ActionSpec], *, updates_per_s: float, per_minute: int | None
    ) -> Budget:
        """The catalog's best sustained rate (a type's points per its minimum duration, or per
        update interval for instant types), unless ``per_minute`` is given."""
        uncapped = [s for s in catalog.values() if s.per_day is None and s.per_hour is None]
        specs = uncapped or list(catalog.values())
        burst = max(s.points for s in specs)
        if per_minute is None:
            best = max(s.points / max(s.min_duration_ms / 1000, 1 / updates_per_s) for s in specs)
            per_minute = max(1, math.ceil(best * 60))
        return cls(per_minute=per_minute, burst_points=burst)


@dataclass(frozen=True, slots=True)
class _Periods:
    """The hour and the day ``now`` falls in: the counters' key suffixes and when they end.

    Kept for the hour: formatting the suffixes and computing the ends per update was about 4%
    of the gateway's CPU per update (py-spy under bench_ingest).
    """

    start: datetime
    hour_end: datetime
    day_end: datetime
    hour: str
    day: str

    @classmethod
    def of(cls, now: datetime) -> _Periods:
        start = now.replace(minute=0, second=0, microsecond=0)
        day_start = start.replace(hour=0)
        return cls(
            start,
            start + timedelta(hours=1),
            day_start + timedelta(days=1),
            f"h:{now:%Y%m%d%H}",
            f"d:{now:%Y%m%d}",
        )

    def holds(self, now: datetime) -> bool:
        """Whether ``now`` (in the same time zone) falls in this hour."""
        return now.tzinfo is self.start.tzinfo and self.start <= now < self.hour_end


class EarningRules:
    """The rules' Redis keys and script arguments for one deployment."""

    def __init__(self, prefix: str, catalog: Catalog, budget: Budget) -> None:
        self._prefix = f"{prefix}earn:"
        self._catalog = catalog
        self.budget = budget
        self._periods = _Periods.of(datetime.now(UTC))

    def _periods_of(self, now: datetime) -> _Periods:
        periods = self._periods
        if not periods.holds(now):
            periods = _Periods.of(now)
            if periods.start > self._periods.start:
                self._periods = periods  # a past time (a refund) does not replace the hour
        return periods

    def _keys(self, user_id: uuid.UUID, action_type: str, now: datetime) -> list[str]:
        base = f"{self._prefix}{user_id}:{action_type}"
        periods = self._periods_of(now)
        return [f"{base}:open", f"{base}:pace", f"{base}:{periods.hour}", f"{base}:{periods.day}"]

    def issue_input(
        self, ticket_key: str, user_id: uuid.UUID, action_type: str, spec: ActionSpec, now: datetime
    ) -> tuple[list[str], list[str | int]]:
        """KEYS and ARGV of the ticket script, but for the ticket's JSON, TTL and times."""
        open_key, pace, hour, day = self._keys(user_id, action_type, now)
        return [ticket_key, open_key, pace, hour, day], [
            spec.max_open,
            spec.min_duration_ms,
            spec.per_hour or 0,
            spec.per_day or 0,
        ]

    def redeem_input(
        self, user_id: uuid.UUID, action_type: str, spec: ActionSpec | None, now: datetime
    ) -> tuple[list[str], list[str | int]]:
        """KEYS (open tickets, hour, day, budget) and ARGV (per hour, per day, the budget's
        interval, burst and this action's cost, the counters' TTLs) of the admission script."""
        open_key, _, hour, day = self._keys(user_id, action_type, now)
        keys = [open_key, hour, day, f"{self._prefix}{user_id}:budget"]
        if spec is None:
            return keys, [0, 0, self.budget.interval_us, self.budget.burst_points, 0, 1, 1]
        capped = spec.per_day is not None or spec.per_hour is not None
        periods = self._periods_of(now)
        hour_end, day_end = periods.hour_end, periods.day_end
        margin = timedelta(minutes=5)  # the counters outlive their period a little
        return keys, [
            spec.per_hour or 0,
            spec.per_day or 0,
            self.budget.interval_us,
            self.budget.burst_points,
            0 if capped else spec.points,
            round((hour_end - now + margin) / timedelta(milliseconds=1)),
            round((day_end - now + margin) / timedelta(milliseconds=1)),
        ]

    def refund_input(
        self, user_id: uuid.UUID, action_type: str, claimed_at: datetime
    ) -> tuple[list[str], list[str | int]]:
        """KEYS (hour, day, budget) and ARGV (per hour, per day, microseconds to give back) that
        undo what the claim made at ``claimed_at`` counted."""
        spec = self._catalog.find(action_type)
        keys, args = self.redeem_input(user_id, action_type, spec, claimed_at)
        per_hour, per_day, interval, _, cost = args[:5]
        return keys[1:], [per_hour, per_day, int(interval) * int(cost)]

    def refused(
        self, rule: str, action_type: str, now: datetime, wait_ms: float = 0.0
    ) -> EarningLimited:
        """The 429 for ``rule``; Retry-After until the rule lets the same request through."""
        spec = self._catalog.find(action_type)
        periods = self._periods_of(now)
        retry_after_s = {
            "period_cap_day": (periods.day_end - now).total_seconds(),
            "period_cap_hour": (periods.hour_end - now).total_seconds(),
        }.get(rule, wait_ms / 1000)
        cap = None
        if spec is not None:
            cap = spec.per_day if rule == "period_cap_day" else spec.per_hour
        detail = _DETAILS[rule].format(
            type=action_type,
            min_ms=spec.min_duration_ms if spec is not None else 0,
            cap=cap,
            rate=self.budget.per_minute,
        )
        return EarningLimited(rule, detail, retry_after_s=retry_after_s)


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (the periods are UTC hours and days)."""
    return moment.astimezone(UTC)


ISSUE_LUA: Final = _ISSUE_LUA

# Undoes an earning charge. KEYS: hour and day counters, budget. ARGV: per hour, per day,
# microseconds of budget to give back.
REFUND_LUA_FUNCTION: Final = """
local function refund(hour_key, day_key, budget_key, per_hour, per_day, budget_us)
  if per_day > 0 and tonumber(redis.call('GET', day_key) or '0') > 0 then
    redis.call('DECR', day_key)
  end
  if per_hour > 0 and tonumber(redis.call('GET', hour_key) or '0') > 0 then
    redis.call('DECR', hour_key)
  end
  local tat = redis.call('GET', budget_key)
  if budget_us > 0 and tat then
    redis.call('SET', budget_key, string.format('%.0f', tonumber(tat) - budget_us), 'KEEPTTL')
  end
end
"""
