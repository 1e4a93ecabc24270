"""The update path's Redis checks in one round trip, in the seed's order.

Redeeming a ticket needs four facts from Redis before the ticket itself can be checked: is the
login session revoked, is the user banned or deleted (401/403), was the action already completed
(409), do the rate limits allow one more (429), and what ticket was issued. One Lua script answers
all of them atomically and stops at the first failing check, so a rejected request charges no
rate limit it did not reach, exactly as separate calls would, at a quarter of the round trips
(the gateway's CPU per update is dominated by redis-py's per-command cost; see
bench/bench_e2e_latency.py's ``cpu_ms_per_update``).

The ticket checks that need the HMAC key (400) run afterwards in Python
(:func:`gateway.tickets.check_completion`), then :meth:`gateway.tickets.TicketStore.claim`
redeems the ticket: the claim stays a separate SET NX so the exactly-once guarantee does not
depend on anything read here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

import redis.asyncio as aioredis
from aiohttp import web

from gateway.authn import Authenticator, Principal, raise_for_account
from gateway.ratelimit import GCRA_LUA_FUNCTION, Limit, RateLimited, RateLimiter
from gateway.tickets import AlreadyCompleted, Ticket, TicketStore

# KEYS: revoked session, user status, done marker, ticket, then one key per rate limit.
# ARGV: the rate limits' (interval, tolerance) pairs. Returns {code, ...}.
_ADMIT_LUA: Final = (
    GCRA_LUA_FUNCTION
    + """
local status = redis.call('GET', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 or status == 'deleted' or status == 'banned' then
  return {'account', redis.call('EXISTS', KEYS[1]), status or ''}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {'done'}
end
local limits = {}
for i = 5, #KEYS do limits[#limits + 1] = KEYS[i] end
local denied, wait = gcra(limits, ARGV)
if denied > 0 then
  return {'limited', denied, wait}
end
local ticket = redis.call('GET', KEYS[4])
if ticket then
  return {'ok', ticket}
end
return {'ok'}
"""
)


class Admission:
    """Account, duplicate and rate-limit checks for one update, and its stored ticket."""

    def __init__(
        self,
        redis: aioredis.Redis,
        authenticator: Authenticator,
        tickets: TicketStore,
        limiter: RateLimiter,
    ) -> None:
        self._script = redis.register_script(_ADMIT_LUA)
        self._authenticator = authenticator
        self._tickets = tickets
        self._limiter = limiter

    async def admit(
        self, principal: Principal, action_id: uuid.UUID, limits: Sequence[Limit]
    ) -> Ticket | None:
        """The stored ticket (None if unknown, expired or redeemed) of an admitted update.

        Raises, in this order: 401 revoked session or deleted user, 403 banned user, 409 action
        already completed, 429 rate limited (charging the limits only when all allow it).
        """
        limit_keys, limit_args = self._limiter.script_input(limits)
        keys = [
            *self._authenticator.account_keys(principal),
            *self._tickets.keys(action_id),
            *limit_keys,
        ]
        result = await self._script(keys=keys, args=limit_args)
        code = result[0]
        if code == b"account":
            raise_for_account(revoked=int(result[1]) == 1, status=result[2] or None)
        if code == b"done":
            raise AlreadyCompleted("this action was already completed")
        if code == b"limited":
            raise RateLimited(self._limiter.decision(limits, result[1], result[2]))
        if code != b"ok":
            raise RuntimeError(f"unexpected admission result {result!r}")
        return Ticket.from_json(action_id, result[1]) if len(result) > 1 else None


admission_key = web.AppKey("admission", Admission)
