"""The done marker of an action (:func:`common.keyspace.done_key`): claimed, published, applied.

The admission script (:mod:`gateway.admission`) claims the action in the round trip that checks
the completion (``DONE_CLAIMED<ms>:<gateway>``); once Kafka acknowledges the command this gateway
marks it published (``DONE_PUBLISHED<ms>``); the broadcaster marks it applied (``DONE_APPLIED``)
when the ScoreChanged arrives. When Kafka does not take the command the claim is released, so the
same request can be retried.

A retry that finds a claim waits for it (:meth:`Claims.wait_settled`): published or applied is a
409 (the action is recorded); a claim still unpublished after ``claim_stale_after_s`` (its
gateway died between the claim and Kafka's acknowledgement) is taken over by the retry, which
publishes the command itself. That is safe because the score service applies an action id at
most once.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Final

import redis.asyncio as aioredis
import structlog

from common.keyspace import DONE_CLAIMED, done_key, lua
from gateway.earning import REFUND_LUA_FUNCTION, EarningRules
from gateway.redis_pipeline import PipelinedRedis
from gateway.timestamps import epoch_ms

log = structlog.get_logger(__name__)

# The state of a done marker for a redemption at ``now``: 'free' (absent, or a claim older than
# ``takeover_ms``: taken over), 'pending' (a younger claim: wait for it) or 'done' (published,
# applied, or anything that is not a claim). ``claim`` writes this gateway's claim.
MARKER_LUA_FUNCTIONS: Final = lua(
    """
local function marker_state(marker, now, takeover_ms)
  if not marker then return 'free' end
  if string.sub(marker, 1, #@DONE_CLAIMED) ~= @DONE_CLAIMED then return 'done' end
  local claimed = tonumber(string.match(string.sub(marker, #@DONE_CLAIMED + 1), '^(%d+)'))
  if claimed == nil then return 'done' end
  if now - claimed < takeover_ms then return 'pending' end
  return 'free'
end
local function claim(key, now, gateway, ttl_s)
  redis.call('SET', key, @DONE_CLAIMED .. now .. ':' .. gateway, 'EX', ttl_s)
end
"""
)

# KEYS: done marker. ARGV: done TTL (s), now (ms), take over after (ms), gateway id.
_CLAIM_LUA: Final = (
    MARKER_LUA_FUNCTIONS
    + """
if marker_state(redis.call('GET', KEYS[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) ~= 'free' then
  return 0
end
claim(KEYS[1], ARGV[2], ARGV[4], ARGV[1])
return 1
"""
)

# KEYS: done marker. ARGV: the claim's value, now (ms). The claim becomes "published", unless it
# is no longer this claim (applied meanwhile, or taken over by a retry that publishes itself).
_PUBLISHED_LUA: Final = lua(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], @DONE_PUBLISHED .. ARGV[2], 'KEEPTTL')
  return 1
end
return 0
"""
)

# KEYS: done marker, then the earning rules' hour and day counters and budget. ARGV: the claim's
# value, then per hour, per day and the budget to give back (gateway.earning). Deletes the marker
# and undoes what the claim counted, only if it is still that claim.
_RELEASE_LUA: Final = (
    REFUND_LUA_FUNCTION
    + """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  refund(KEYS[2], KEYS[3], KEYS[4], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
  return 1
end
return 0
"""
)


def gateway_id() -> str:
    """This process, as its claims name it (host and pid: unique among live replicas)."""
    return f"{socket.gethostname()}-{os.getpid()}"


class Claims:
    """Claiming, publishing, releasing and waiting on done markers."""

    def __init__(
        self,
        redis: aioredis.Redis,
        pipelined: PipelinedRedis,
        prefix: str,
        earning: EarningRules,
        *,
        done_ttl_s: int,
        stale_after_s: float,
        gateway: str | None = None,
        poll_s: float = 0.05,
    ) -> None:
        self._redis = redis
        self._pipelined = pipelined
        self._prefix = prefix
        self._earning = earning
        self.done_ttl_s = done_ttl_s
        self.stale_after_ms = round(stale_after_s * 1000)
        self.gateway = gateway or gateway_id()
        self._poll_s = poll_s
        self._claim = redis.register_script(_CLAIM_LUA)
        self._release = redis.register_script(_RELEASE_LUA)

    def key(self, action_id: uuid.UUID) -> str:
        """The done marker of ``action_id``."""
        return done_key(self._prefix, action_id)

    def value(self, claimed_at: datetime) -> str:
        """This gateway's claim made at ``claimed_at``."""
        return claim_value(claimed_at, self.gateway)

    async def claim(self, action_id: uuid.UUID, now: datetime) -> bool:
        """Claim the action at ``now``; False if it is recorded, or claimed and not yet stale."""
        claimed = await self._claim(
            keys=[self.key(action_id)],
            args=[self.done_ttl_s, epoch_ms(now), self.stale_after_ms, self.gateway],
        )
        return bool(claimed)

    async def mark_published(
        self, action_id: uuid.UUID, claimed_at: datetime, now: datetime
    ) -> None:
        """Kafka has the command: from now on a retry is a 409."""
        await self._pipelined.eval_script(
            _PUBLISHED_LUA, [self.key(action_id)], [self.value(claimed_at), epoch_ms(now)]
        )

    async def release(
        self, action_id: uuid.UUID, claimed_at: datetime, user_id: uuid.UUID, action_type: str
    ) -> None:
        """Undo a claim made at ``claimed_at`` (the command was not published), and what it
        counted against the earning rules, unless the action was meanwhile confirmed applied:
        a retry of the same request then succeeds."""
        refund_keys, refund_args = self._earning.refund_input(user_id, action_type, claimed_at)
        await self._release(
            keys=[self.key(action_id), *refund_keys], args=[self.value(claimed_at), *refund_args]
        )

    async def wait_settled(self, action_id: uuid.UUID, marker: bytes) -> None:
        """Wait while the action stays claimed by ``marker``, at most until it may be taken over.

        Returns as soon as the marker changes (published, applied, released, claimed anew) or the
        claim grows stale; the caller then runs the admission again, which decides.
        """
        try:
            claimed_ms = int(marker[len(DONE_CLAIMED) :].split(b":", 1)[0])
        except ValueError:
            return
        loop = asyncio.get_running_loop()
        now_ms = epoch_ms(datetime.now(UTC))
        deadline = loop.time() + max(0, claimed_ms + self.stale_after_ms - now_ms) / 1000
        key = self.key(action_id)
        while loop.time() < deadline:
            await asyncio.sleep(min(self._poll_s, max(0.0, deadline - loop.time())))
            if await self._redis.get(key) != marker:
                return


def claim_value(claimed_at: datetime, gateway: str) -> str:
    """The done marker's value while ``gateway``'s claim made at ``claimed_at`` is published."""
    return f"{DONE_CLAIMED}{epoch_ms(claimed_at)}:{gateway}"
