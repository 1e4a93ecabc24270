"""Admitting a completion: every rule of the update path, in the contract's order, once.

Redeeming a ticket needs facts only Redis has: is the login session revoked, is the user banned
or deleted (401/403), was the action already completed (409), do the rate limits allow one more
(429), what ticket was issued, and does the completion match it (400). One Lua script answers
all of them atomically, stops at the first failing check (so a rejected request charges no rate
limit it did not reach) and, when every check passes, claims the action (:mod:`gateway.claims`):
one round trip per accepted update, on the auto-pipelined connection of
:mod:`gateway.redis_pipeline` (redis-py's cost per command dominated the gateway's CPU; see
bench/bench_e2e_latency.py's ``cpu_ms_per_update``).

The only check made before Redis is the action hash's MAC (Redis has no HMAC): the script gets
the action type the hash was issued for (:meth:`gateway.signing.TicketSigner.signed_type`) and
compares it with the stored ticket's. The 400s, in order: unknown or expired ticket, someone
else's ticket, a hash that does not verify, an action type other than the ticket's, an action
type the catalog no longer has, completion sooner than the minimum duration, client-sent points
that differ from the catalog's.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from common.gcra import GCRA_LUA_FUNCTION
from common.keyspace import lua, revoked_session_key, ticket_key, user_status_key
from common.problems import BadRequest, Conflict
from common.rejections import Rejection
from gateway.accounts import raise_for_account
from gateway.catalog import ActionSpec, Catalog
from gateway.claims import MARKER_LUA_FUNCTIONS, Claims
from gateway.earning import EARNING_LUA_FUNCTIONS, EarningRules
from gateway.ratelimit import Limit, RateLimited, RateLimiter
from gateway.redis_pipeline import PipelinedRedis
from gateway.signing import TicketSigner
from gateway.tickets import Ticket
from gateway.timestamps import epoch_ms
from gateway.tokens import Principal

# KEYS: revoked session, user status, done marker, ticket, the earning rules' open tickets, hour
# and day counters and points budget (gateway.earning), then one key per rate limit.
# ARGV: the rate limits' (interval, tolerance) pairs, then now (ms), the claim's stale age (ms),
# user id, action type, the type the hash was issued for ('' when none), minimum duration (ms,
# -1 for a type the catalog does not have), points ok (1/0), the done marker's TTL (s), this
# gateway's id (for its claim), then the earning rules' per hour, per day, budget interval (us
# per point), burst (points), this action's cost (points) and the counters' TTLs (ms).
_ADMIT_LUA: Final = (
    GCRA_LUA_FUNCTION
    + MARKER_LUA_FUNCTIONS
    + EARNING_LUA_FUNCTIONS
    + lua(
        """
local status = redis.call('GET', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 1 or status == @USER_DELETED or status == @USER_BANNED then
  return {'account', redis.call('EXISTS', KEYS[1]), status or ''}
end
local limits, n = {}, (#KEYS - 8) * 2
local now, stale_ms = tonumber(ARGV[n + 1]), tonumber(ARGV[n + 2])
local marker = redis.call('GET', KEYS[3])
local state = marker_state(marker, now, stale_ms)
if state == 'done' then return {'done'} end
if state == 'pending' then return {'pending', marker} end
for i = 9, #KEYS do limits[#limits + 1] = KEYS[i] end
local denied, wait = gcra(limits, ARGV)
if denied > 0 then
  return {'limited', denied, wait}
end
local per_hour, per_day = tonumber(ARGV[n + 10]), tonumber(ARGV[n + 11])
local rule = capped(KEYS[6], KEYS[7], per_hour, per_day)
if rule then return {'earning', rule, 0} end
local budget_wait, charge = budget(KEYS[8], tonumber(ARGV[n + 12]), tonumber(ARGV[n + 13]),
  tonumber(ARGV[n + 14]))
if budget_wait > 0 then return {'earning', 'points_budget', string.format('%.0f', budget_wait)} end
local ticket = redis.call('GET', KEYS[4])
if not ticket then return {'rejected', 'ticket_unknown'} end
local t = cjson.decode(ticket)
if t.expires_ms <= now then return {'rejected', 'ticket_unknown'} end
if t.user_id ~= ARGV[n + 3] then return {'rejected', 'ticket_not_yours'} end
if t.action_type ~= ARGV[n + 5] then return {'rejected', 'hash_invalid'} end
if t.action_type ~= ARGV[n + 4] then return {'rejected', 'type_mismatch'} end
local elapsed, min_ms = now - t.issued_ms, tonumber(ARGV[n + 6])
if min_ms < 0 then return {'rejected', 'type_unknown'} end
if min_ms > 0 and elapsed < min_ms then
  return {'rejected', 'too_fast', string.format('%.0f', elapsed)}
end
if ARGV[n + 7] ~= '1' then return {'rejected', 'points_mismatch'} end
claim(KEYS[3], ARGV[n + 1], ARGV[n + 9], ARGV[n + 8])
count_caps(KEYS[6], KEYS[7], per_hour, per_day, ARGV[n + 15], ARGV[n + 16])
charge_budget(KEYS[8], charge)
redis.call('ZREM', KEYS[5], KEYS[4])
return {'claimed', ticket}
"""
    )
)


class AlreadyCompleted(Conflict, Rejection):
    """409: this action id was already submitted."""

    reason = "duplicate_action"


class TicketRejected(BadRequest, Rejection):
    """400: the completion does not match a valid ticket, or is not plausible."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


_DETAILS: Final = {
    "ticket_unknown": "unknown or expired action_id",
    "ticket_not_yours": "this action was issued to another user",
    "hash_invalid": "action_hash does not verify",
    "type_mismatch": "action_type does not match the ticket",
}


@dataclass(frozen=True)
class Redeemed:
    """A claimed completion: its ticket, its catalog entry and when it was claimed."""

    ticket: Ticket
    spec: ActionSpec
    claimed_at: datetime


# How often one request waits for a claim in flight before it answers from the marker's state.
_MAX_WAITS: Final = 3


class Admission:
    """Admits completions: the account, duplicate, rate-limit and ticket checks, then the claim."""

    def __init__(
        self,
        redis: PipelinedRedis,
        prefix: str,
        *,
        catalog: Catalog,
        signer: TicketSigner,
        claims: Claims,
        limiter: RateLimiter,
        earning: EarningRules,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._catalog = catalog
        self._signer = signer
        self._claims = claims
        self._limiter = limiter
        self._earning = earning

    async def redeem(
        self,
        principal: Principal,
        action_id: uuid.UUID,
        action_type: str,
        action_hash: str,
        points: int | None,
        limits: Sequence[Limit],
    ) -> Redeemed:
        """Claim the action if every rule passes.

        Raises, in this order: 401 revoked session or deleted user, 403 banned user, 409 action
        already recorded (published or applied), 429 rate limited (charging the limits only when
        all allow it), 429 an earning rule (period cap, points budget; charged only with the
        claim), then the 400s in the order of the module docstring. An action claimed by
        another request and not yet published is waited for: once recorded it is a 409; once
        its claim is stale (its gateway died before Kafka acknowledged) this request takes it
        over (:mod:`gateway.claims`).
        """
        spec = self._catalog.find(action_type)
        signed_type = self._signer.signed_type(
            action_hash, action_id, principal.user_id, action_type, self._catalog.types
        )
        limit_keys, limit_args = self._limiter.script_input(limits)
        account_keys = [
            revoked_session_key(self._prefix, principal.session_id),
            user_status_key(self._prefix, principal.user_id),
            self._claims.key(action_id),
            ticket_key(self._prefix, action_id),
        ]
        ticket_args: list[str | int] = [
            str(principal.user_id),
            action_type,
            signed_type or "",
            -1 if spec is None else spec.min_duration_ms,
            1 if spec is not None and points in (None, spec.points) else 0,
            self._claims.done_ttl_s,
            self._claims.gateway,
        ]
        for _ in range(_MAX_WAITS + 1):
            now = datetime.now(UTC)
            earning_keys, earning_args = self._earning.redeem_input(
                principal.user_id, action_type, spec, now
            )
            keys = [*account_keys, *earning_keys, *limit_keys]
            args = [
                *limit_args,
                epoch_ms(now),
                self._claims.stale_after_ms,
                *ticket_args,
                *earning_args,
            ]
            result: list[Any] = await self._redis.eval_script(_ADMIT_LUA, keys, args)
            code = result[0]
            if code == b"claimed" and spec is not None:
                return Redeemed(Ticket.from_json(action_id, result[1]), spec, now)
            if code != b"pending":
                break
            await self._claims.wait_settled(action_id, result[1])
        if code == b"account":
            raise_for_account(revoked=int(result[1]) == 1, status=result[2] or None)
        if code in (b"done", b"pending"):
            raise AlreadyCompleted("this action was already completed")
        if code == b"limited":
            raise RateLimited(self._limiter.decision(limits, result[1], result[2]))
        if code == b"earning":
            wait_ms = int(result[2]) / 1000
            raise self._earning.refused(result[1].decode(), action_type, now, wait_ms)
        if code == b"rejected":
            raise self._rejection(result[1].decode(), action_type, spec, result[2:])
        raise RuntimeError(f"unexpected admission result {result!r}")

    def _rejection(
        self, reason: str, action_type: str, spec: ActionSpec | None, extra: list[Any]
    ) -> BadRequest:
        if reason == "type_unknown" or spec is None:
            return self._catalog.unknown(action_type)
        if reason == "too_fast":
            elapsed_ms = float(extra[0]) if extra else 0.0
            return TicketRejected(
                f"completed after {elapsed_ms:.0f} ms; '{action_type}' takes at least "
                f"{spec.min_duration_ms} ms",
                reason=reason,
            )
        if reason == "points_mismatch":
            return TicketRejected(
                f"points must be {spec.points} for '{action_type}' (the catalog decides)",
                reason=reason,
            )
        return TicketRejected(_DETAILS[reason], reason=reason)
