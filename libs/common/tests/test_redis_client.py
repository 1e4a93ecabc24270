"""Which Redis client a URL gives: one server, or a Redis Cluster for the services that take one."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster

from common.redis_client import (
    ClusterNotSupported,
    create_redis,
    create_redis_or_cluster,
    is_cluster_url,
)
from common.settings import CommonSettings


def _settings(url: str) -> CommonSettings:
    return CommonSettings.load(redis_url=url, service_name="gateway")


def test_cluster_urls_are_told_apart() -> None:
    assert is_cluster_url("redis+cluster://10.0.0.1:6379")
    assert is_cluster_url("rediss+cluster://u:p@10.0.0.1:6379,10.0.0.2:6379")
    assert not is_cluster_url("redis://127.0.0.1:6379/0")
    assert not is_cluster_url("rediss://127.0.0.1:6379/0")


def test_a_single_server_service_refuses_a_cluster() -> None:
    with pytest.raises(ClusterNotSupported, match="gateway needs one Redis server"):
        create_redis(_settings("redis+cluster://127.0.0.1:7000"))


async def test_a_cluster_url_gives_a_cluster_client_with_every_seed_and_the_credentials() -> None:
    client = create_redis_or_cluster(
        _settings("redis+cluster://broad%3Acaster:s%40cret@10.0.0.1:7000,10.0.0.2:7001")
    )
    assert isinstance(client, RedisCluster)
    seeds = client.nodes_manager.startup_nodes
    assert sorted(seeds) == ["10.0.0.1:7000", "10.0.0.2:7001"]
    kwargs = next(iter(seeds.values())).connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == ("broad:caster", "s@cret")
    await client.aclose()


async def test_a_server_url_gives_the_pooled_server_client() -> None:
    client = create_redis_or_cluster(_settings("redis://127.0.0.1:6379/0"))
    assert isinstance(client, aioredis.Redis)
    assert isinstance(client.connection_pool, aioredis.BlockingConnectionPool)
    await client.aclose()


@pytest.mark.parametrize(
    "url", ["redis+cluster://", "redis+cluster://10.0.0.1", "redis+cluster://h:x"]
)
def test_a_cluster_url_without_a_node_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        create_redis_or_cluster(_settings(url))


def test_the_key_prefix_holds_no_hash_tag() -> None:
    """A brace in the prefix would become every key's hash tag: one slot for everything."""
    with pytest.raises(ValidationError):
        CommonSettings.load(redis_prefix="{sb}:")
