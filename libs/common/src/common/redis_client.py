"""The Redis client with timeouts, and key naming under the deployment's prefix."""

from __future__ import annotations

import redis.asyncio as aioredis

from common.settings import CommonSettings


def create_redis(settings: CommonSettings) -> aioredis.Redis:
    """A pooled client; commands time out rather than hang (Redis down must not stall requests)."""
    return aioredis.from_url(
        settings.redis_url,
        socket_timeout=2.0,
        socket_connect_timeout=2.0,
        health_check_interval=15,
        decode_responses=False,
    )
