"""The done marker of an action (:func:`common.keyspace.done_key`): redeemed at most once.

The admission script (:mod:`gateway.admission`) claims it in the round trip that checks the
completion; while the command is published it holds ``DONE_CLAIMED<ms>`` (when it was claimed);
the broadcaster turns it into ``DONE_APPLIED`` once the ScoreChanged arrives. When Kafka does not
take the command the claim is released, so the same request can be retried. A claim that stays
unconfirmed for longer than ``claim_stale_after_s`` (its gateway died before Kafka acknowledged)
no longer blocks: a retry takes it over and publishes again, which is safe because the score
service applies an action id at most once.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Final

import redis.asyncio as aioredis

from common.keyspace import DONE_CLAIMED, done_key, lua
from gateway.timestamps import epoch_ms

# Whether a done marker stops a redemption: applied (any value that is not a claim), or claimed
# less than ``stale_ms`` before ``now``. Shared with the admission script.
BLOCKS_LUA_FUNCTION: Final = lua(
    """
local function blocks(marker, now, stale_ms)
  if not marker then return false end
  if string.sub(marker, 1, #@DONE_CLAIMED) ~= @DONE_CLAIMED then return true end
  local claimed = tonumber(string.sub(marker, #@DONE_CLAIMED + 1))
  return claimed == nil or now - claimed < stale_ms
end
local function claim(key, now, ttl_s)
  redis.call('SET', key, @DONE_CLAIMED .. now, 'EX', ttl_s)
end
"""
)

# KEYS: done marker. ARGV: done TTL (s), now (ms), stale after (ms).
_CLAIM_LUA: Final = (
    BLOCKS_LUA_FUNCTION
    + """
if blocks(redis.call('GET', KEYS[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then
  return 0
end
claim(KEYS[1], ARGV[2], ARGV[1])
return 1
"""
)

# KEYS: done marker. ARGV: the claim's value. Deletes the marker only if it is still that claim.
_RELEASE_LUA: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


def claim_value(claimed_at: datetime) -> str:
    """The done marker's value while a claim made at ``claimed_at`` is being published."""
    return f"{DONE_CLAIMED}{epoch_ms(claimed_at)}"


class Claims:
    """Claiming and releasing done markers outside the admission script."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, *, done_ttl_s: int, stale_after_s: float
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.done_ttl_s = done_ttl_s
        self.stale_after_ms = round(stale_after_s * 1000)
        self._claim = redis.register_script(_CLAIM_LUA)
        self._release = redis.register_script(_RELEASE_LUA)

    def key(self, action_id: uuid.UUID) -> str:
        """The done marker of ``action_id``."""
        return done_key(self._prefix, action_id)

    async def claim(self, action_id: uuid.UUID, now: datetime) -> bool:
        """Claim the action at ``now``; False if it is applied or claimed and not yet stale."""
        claimed = await self._claim(
            keys=[self.key(action_id)], args=[self.done_ttl_s, epoch_ms(now), self.stale_after_ms]
        )
        return bool(claimed)

    async def release(self, action_id: uuid.UUID, claimed_at: datetime) -> None:
        """Undo a claim made at ``claimed_at`` (the command was not published), unless the
        action was meanwhile confirmed applied: a retry of the same request then succeeds."""
        await self._release(keys=[self.key(action_id)], args=[claim_value(claimed_at)])
