"""The update path's Redis work in one round trip, in the seed's order.

Redeeming a ticket needs facts only Redis has: is the login session revoked, is the user banned
or deleted (401/403), was the action already completed (409), do the rate limits allow one more
(429), what ticket was issued, and does the completion match it (400). One Lua script answers
all of them atomically and stops at the first failing check, so a rejected request charges no
rate limit it did not reach, exactly as separate calls would. When the action hash verifies up
front (version 2 hashes sign only what the completion carries, see
:class:`gateway.tickets.TicketSigner`) the same script also claims the ticket (SET NX on the done
marker, delete the ticket): one round trip per accepted update instead of four (redis-py's cost
per command dominated the gateway's CPU; see bench/bench_e2e_latency.py's
``cpu_ms_per_update``), on the auto-pipelined connection of
:mod:`common.redis_pipeline`. Otherwise (a bad or version-1 hash, an unknown action type, a ticket
stored by an older gateway) the script only checks and fetches, and the caller runs
:func:`gateway.tickets.check_completion` and :meth:`gateway.tickets.TicketStore.claim`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from aiohttp import web

from common.redis_pipeline import PipelinedRedis
from gateway.authn import Authenticator, Principal, raise_for_account
from gateway.catalog import ActionSpec
from gateway.ratelimit import GCRA_LUA_FUNCTION, Limit, RateLimited, RateLimiter
from gateway.tickets import (
    CLAIM_LUA_FUNCTION,
    AlreadyCompleted,
    Ticket,
    TicketStore,
    epoch_ms,
    rejection,
)

# KEYS: revoked session, user status, done marker, ticket, then one key per rate limit.
# ARGV: the rate limits' (interval, tolerance) pairs, then the mode, now (ms) and the claim's
# stale age (ms). Mode 'check' returns the ticket; 'redeem' is followed by user id, action type,
# minimum duration (ms), points ok (1/0) and the done marker's TTL (s): it checks the ticket as
# check_completion does and claims it.
_ADMIT_LUA: Final = (
    GCRA_LUA_FUNCTION
    + CLAIM_LUA_FUNCTION
    + """
local status = redis.call('GET', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 or status == 'deleted' or status == 'banned' then
  return {'account', redis.call('EXISTS', KEYS[1]), status or ''}
end
local limits, n = {}, (#KEYS - 4) * 2
local now, stale_ms = tonumber(ARGV[n + 2]), tonumber(ARGV[n + 3])
if blocks(redis.call('GET', KEYS[3]), now, stale_ms) then
  return {'done'}
end
for i = 5, #KEYS do limits[#limits + 1] = KEYS[i] end
local denied, wait = gcra(limits, ARGV)
if denied > 0 then
  return {'limited', denied, wait}
end
local ticket = redis.call('GET', KEYS[4])
if ARGV[n + 1] ~= 'redeem' then
  if ticket then return {'ok', ticket} end
  return {'ok'}
end
if not ticket then return {'rejected', 'ticket_unknown'} end
local t = cjson.decode(ticket)
if type(t.issued_ms) ~= 'number' or type(t.expires_ms) ~= 'number' then
  return {'legacy', ticket}
end
if t.expires_ms <= now then return {'rejected', 'ticket_unknown'} end
if t.user_id ~= ARGV[n + 4] then return {'rejected', 'ticket_not_yours'} end
if t.action_type ~= ARGV[n + 5] then return {'rejected', 'type_mismatch'} end
local elapsed, min_ms = now - t.issued_ms, tonumber(ARGV[n + 6])
if min_ms > 0 and elapsed < min_ms then
  return {'rejected', 'too_fast', string.format('%.0f', elapsed)}
end
if ARGV[n + 7] ~= '1' then return {'rejected', 'points_mismatch'} end
redis.call('SET', KEYS[3], 'c:' .. ARGV[n + 2], 'EX', ARGV[n + 8])
return {'claimed', ticket}
"""
)


@dataclass(frozen=True)
class Redeemed:
    """What :meth:`Admission.redeem` did: claimed the ticket, or found one the script cannot
    judge (stored by an older gateway), which the caller checks and claims itself."""

    ticket: Ticket
    claimed: bool


class Admission:
    """Account, duplicate and rate-limit checks for one update, and its stored ticket."""

    def __init__(
        self,
        redis: PipelinedRedis,
        authenticator: Authenticator,
        tickets: TicketStore,
        limiter: RateLimiter,
    ) -> None:
        self._redis = redis
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
        result = await self._run(principal, action_id, limits, ["check", *self._clock(None)])
        return Ticket.from_json(action_id, result[1]) if len(result) > 1 else None

    async def redeem(
        self,
        principal: Principal,
        action_id: uuid.UUID,
        limits: Sequence[Limit],
        *,
        action_type: str,
        spec: ActionSpec,
        points: int | None,
        now: datetime,
    ) -> Redeemed:
        """Admit and redeem a completion whose action hash already verified, in one round trip.

        Raises what :meth:`admit` raises, then the 400s of
        :func:`gateway.tickets.check_completion` in its order (the hash check passed already).
        """
        points_ok = points is None or points == spec.points
        result = await self._run(
            principal,
            action_id,
            limits,
            [
                "redeem",
                *self._clock(now),
                str(principal.user_id),
                action_type,
                spec.min_duration_ms,
                1 if points_ok else 0,
                self._tickets.done_ttl_s,
            ],
        )
        code = result[0]
        if code == b"rejected":
            reason = result[1].decode()
            elapsed = float(result[2]) if len(result) > 2 else 0.0
            raise rejection(reason, action_type=action_type, spec=spec, elapsed_ms=elapsed)
        return Redeemed(Ticket.from_json(action_id, result[1]), claimed=code == b"claimed")

    def _clock(self, now: datetime | None) -> list[str | int]:
        """The script's now (ms) and the age (ms) after which a claim counts as stale."""
        moment = now if now is not None else datetime.now(UTC)
        return [epoch_ms(moment), self._tickets.stale_after_ms]

    async def _run(
        self,
        principal: Principal,
        action_id: uuid.UUID,
        limits: Sequence[Limit],
        mode: list[str | int],
    ) -> list[Any]:
        limit_keys, limit_args = self._limiter.script_input(limits)
        keys = [
            *self._authenticator.account_keys(principal),
            *self._tickets.keys(action_id),
            *limit_keys,
        ]
        result: list[Any] = await self._redis.eval_script(_ADMIT_LUA, keys, [*limit_args, *mode])
        code = result[0]
        if code == b"account":
            raise_for_account(revoked=int(result[1]) == 1, status=result[2] or None)
        if code == b"done":
            raise AlreadyCompleted("this action was already completed")
        if code == b"limited":
            raise RateLimited(self._limiter.decision(limits, result[1], result[2]))
        if code not in (b"ok", b"rejected", b"legacy", b"claimed"):
            raise RuntimeError(f"unexpected admission result {result!r}")
        return result


admission_key = web.AppKey("admission", Admission)
