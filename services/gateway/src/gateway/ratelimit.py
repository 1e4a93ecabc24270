"""Rate limits shared by every gateway replica: GCRA in one atomic Redis Lua script.

GCRA (the generic cell rate algorithm) keeps one number per key, the theoretical arrival time
(TAT) of the next request. A request is allowed when it would not arrive earlier than
``TAT - tolerance``, where ``tolerance = (burst - 1) * interval``; allowing it moves TAT one
``interval`` (``1 / rate``) later. Several limits are checked and charged together in one script:
a request denied by any limit charges none of them, and the first denying limit (in the order
given) is reported. The clock is Redis's own (``TIME``), so replicas with skewed clocks agree.

The script runs on the gateway's auto-pipelined connection (:mod:`gateway.redis_pipeline`): a
read's limit check through redis-py's client cost about a fifth of the gateway's CPU per read
(py-spy under bench_ingest's reads), the pipelined call a fraction of that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from common.gcra import GCRA_LUA, Rate
from common.problems import TooManyRequests
from common.rejections import Rejection
from gateway.redis_pipeline import PipelinedRedis
from gateway.settings import Settings


@dataclass(frozen=True)
class Limit:
    """One limit to check: a name (for errors and metrics), the subject's key and its rate."""

    name: str
    key: str
    rate: Rate


@dataclass(frozen=True)
class Decision:
    """The outcome: allowed, or which limit denied and how long until a retry may pass."""

    allowed: bool
    denied_by: str | None = None
    retry_after_s: float = 0.0


class RateLimited(TooManyRequests, Rejection):
    """429 with Retry-After (whole seconds, rounded up)."""

    def __init__(self, decision: Decision) -> None:
        scope = decision.denied_by or "rate"
        super().__init__(
            f"too many requests ({scope} limit); retry after the time in Retry-After",
            retry_after_s=math.ceil(decision.retry_after_s),
        )
        self.reason = f"rate_limited_{scope}"


class RateLimiter:
    """Checks and charges GCRA limits atomically in Redis."""

    def __init__(self, redis: PipelinedRedis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}rl:"

    def script_input(self, limits: Sequence[Limit]) -> tuple[list[str], list[int]]:
        """The keys and arguments :data:`GCRA_LUA_FUNCTION` takes for ``limits``."""
        keys = [f"{self._prefix}{limit.name}:{limit.key}" for limit in limits]
        args: list[int] = []
        for limit in limits:
            args += limit.rate.script_args
        return keys, args

    @staticmethod
    def decision(limits: Sequence[Limit], index: int | bytes, wait_us: int | bytes) -> Decision:
        """Interpret the ``gcra`` function's result (0, or the 1-based denying limit)."""
        if int(index) == 0:
            return Decision(allowed=True)
        return Decision(
            allowed=False,
            denied_by=limits[int(index) - 1].name,
            retry_after_s=int(wait_us) / 1_000_000,
        )

    async def check(self, *limits: Limit) -> Decision:
        """Charge one request against every limit if all allow it; else charge none."""
        if not limits:
            return Decision(allowed=True)
        keys, args = self.script_input(limits)
        index, wait_us = await self._redis.eval_script(GCRA_LUA, keys, args)
        return self.decision(limits, index, wait_us)

    async def enforce(self, *limits: Limit) -> None:
        """Like :meth:`check`, raising :class:`RateLimited` when denied."""
        decision = await self.check(*limits)
        if not decision.allowed:
            raise RateLimited(decision)


@dataclass(frozen=True)
class RatePolicy:
    """The configured rates, by what they protect."""

    update_user: Rate
    update_address: Rate
    actions_address: Rate
    auth_address: Rate
    ws_connect_address: Rate
    reads_address: Rate

    @classmethod
    def from_settings(cls, settings: Settings) -> RatePolicy:
        """Build the policy from the gateway settings."""
        return cls(
            update_user=Rate(settings.update_rate_per_user, settings.update_burst_per_user),
            update_address=Rate(
                settings.update_rate_per_address, settings.update_burst_per_address
            ),
            actions_address=Rate(
                settings.actions_rate_per_address, settings.actions_burst_per_address
            ),
            auth_address=Rate(settings.auth_rate_per_address, settings.auth_burst_per_address),
            ws_connect_address=Rate(
                settings.ws_connect_rate_per_address, settings.ws_connect_burst_per_address
            ),
            reads_address=Rate(settings.reads_rate_per_address, settings.reads_burst_per_address),
        )
