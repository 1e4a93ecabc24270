"""The Redis client with timeouts and a pool that queues briefly instead of failing."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from common.settings import CommonSettings

REDIS_TIMEOUT_S = 2.0
"""How long a command or a connection attempt may take before it fails."""


def create_redis(settings: CommonSettings) -> aioredis.Redis:
    """A pooled client; commands time out rather than hang (Redis down must not stall requests).

    redis-py's default pool raises "Too many connections" beyond its limit; under a burst a
    request should wait a moment for a free connection instead.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_pool_timeout_s,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        health_check_interval=15,
        # A pooled connection that died with the server (a Redis restart) fails on its next
        # command; that command never reached the new server, so it is safe to send it once
        # more on a fresh connection. Timeouts are not retried: the command may have run.
        retry=Retry(NoBackoff(), retries=1),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis.from_pool(pool)
