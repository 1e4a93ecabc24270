"""The Redis client with timeouts and a pool that queues briefly instead of failing.

A Redis URL names one server (``redis://``, ``rediss://``) or a Redis Cluster
(``redis+cluster://`` or ``rediss+cluster://``, then one or more of its nodes, comma-separated:
``redis+cluster://user:password@10.0.0.1:6379,10.0.0.2:6379``; the client learns the others
from them). Only code whose scripts keep to one slot each takes a cluster
(:func:`create_redis_or_cluster`: the broadcaster, docs/architecture.md "Redis Cluster layout");
:func:`create_redis` refuses one.
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from common.settings import CommonSettings

REDIS_TIMEOUT_S = 2.0
"""How long a command or a connection attempt may take before it fails."""

CLUSTER_SCHEMES: Final = {"redis+cluster": False, "rediss+cluster": True}  # scheme -> TLS

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
"""A client of one Redis server or of a Redis Cluster (what :func:`create_redis_or_cluster`
returns)."""


class ClusterNotSupported(ValueError):
    """The service was given a Redis Cluster URL but needs one Redis server."""


def is_cluster_url(url: str) -> bool:
    """True when ``url`` names a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``)."""
    return urlsplit(url).scheme in CLUSTER_SCHEMES


def create_redis(settings: CommonSettings, url: str | None = None) -> aioredis.Redis:
    """A pooled client; commands time out rather than hang (Redis down must not stall requests).

    redis-py's default pool raises "Too many connections" beyond its limit; under a burst a
    request should wait a moment for a free connection instead.

    ``url`` defaults to ``settings.redis_url``. Raises :class:`ClusterNotSupported` for a
    cluster URL: the calling service's scripts touch keys of several slots
    (docs/architecture.md "Redis Cluster layout").
    """
    url = url or settings.redis_url
    if is_cluster_url(url):
        raise ClusterNotSupported(
            f"{settings.service_name} needs one Redis server, not a Redis Cluster "
            "(SCOREBOARD_REDIS_URL is a redis+cluster:// URL): its scripts touch keys of "
            "several slots"
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        url, timeout=settings.redis_pool_timeout_s, **_connection_options(settings)
    )
    return aioredis.Redis.from_pool(pool)


def _connection_options(settings: CommonSettings) -> dict[str, Any]:
    """How every connection behaves, to one server or to the nodes of a cluster."""
    return {
        "max_connections": settings.redis_max_connections,
        "socket_timeout": REDIS_TIMEOUT_S,
        "socket_connect_timeout": REDIS_TIMEOUT_S,
        "health_check_interval": 15,
        # A pooled connection that died with the server (a Redis restart) fails on its next
        # command; that command never reached the new server, so it is safe to send it once
        # more on a fresh connection. Timeouts are not retried: the command may have run.
        "retry": Retry(NoBackoff(), retries=1),
        "retry_on_error": [RedisConnectionError],
    }


def create_redis_or_cluster(settings: CommonSettings, url: str | None = None) -> RedisClient:
    """:func:`create_redis`, or a :class:`RedisCluster` client for a cluster URL (``url``,
    default ``settings.redis_url``).

    The cluster client routes each command (and each script, by its first key) to the node
    that holds its slot, follows MOVED and ASK redirections, and pipelines per node. Its pools
    are per node, ``redis_max_connections`` each, and do not queue: past the limit a command
    fails at once (redis-py has no blocking pool for clusters).
    """
    url = url or settings.redis_url
    if not is_cluster_url(url):
        return create_redis(settings, url)
    parts = urlsplit(url)
    credentials, _, hosts = parts.netloc.rpartition("@")
    username, _, password = credentials.partition(":")
    nodes = [_node(seed) for seed in hosts.split(",") if seed]
    if not nodes:
        raise ValueError("a redis+cluster:// URL names at least one node (host:port)")
    return RedisCluster(
        startup_nodes=nodes,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=CLUSTER_SCHEMES[parts.scheme],
        **_connection_options(settings),
    )


def _node(seed: str) -> ClusterNode:
    host, sep, port = seed.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"a Redis Cluster node is host:port, not {seed!r}")
    return ClusterNode(host.strip("[]"), int(port))
