"""Fixtures: the broadcaster in-process against the real PostgreSQL, Redis and Kafka.

Each app gets a Redis key prefix and a consumer group of its own inside the run's slice, so tests
never read each other's boards. Tests marked ``redis_cluster`` (the board tests) run a second
time with the broadcaster on a three-master Redis Cluster of this run (testkit.redis_cluster),
as a large deployment runs it. Users and scores are seeded straight into PostgreSQL (as the auth
and score services would write them) and changes are produced to the real changed topic.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer

from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common.events import ScoreChanged, ScoreChangedEvent, Topics, encode
from common.kafka import make_producer
from common.redis_client import RedisClient, create_redis_or_cluster
from common.settings import CommonSettings
from common.tracing import inject_headers
from testkit.broadcaster import Send, SettingsFactory
from testkit.env import TestEnv
from testkit.redis_cluster import LocalRedisCluster, local_redis_cluster

# Where the broadcaster's Redis is for a test marked redis_cluster (see pytest_generate_tests).
REDIS_MODES = ("server", "cluster")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``redis_cluster`` run twice: on the shared Redis server and on the local
    Redis Cluster (:func:`redis_mode`); the others on the server only."""
    if "redis_mode" in metafunc.fixturenames and metafunc.definition.get_closest_marker(
        "redis_cluster"
    ):
        metafunc.parametrize("redis_mode", REDIS_MODES, indirect=True, scope="module")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    """Three masters of a Redis Cluster of this run (started on first use, stopped at the end)."""
    with local_redis_cluster(tmp_path_factory.mktemp("redis-cluster")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def redis_mode(request: pytest.FixtureRequest) -> str:
    """Where the broadcaster's Redis is: ``server`` (the shared one) or ``cluster``."""
    mode: str = getattr(request, "param", "server")
    return mode


@pytest.fixture(scope="module")
def redis_url(redis_mode: str, request: pytest.FixtureRequest, test_env: TestEnv) -> str:
    """``SCOREBOARD_REDIS_URL`` in this mode (a ``redis+cluster://`` URL on the cluster)."""
    if redis_mode == "cluster":
        cluster: LocalRedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    return test_env.redis_url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[RedisClient]:
    """A client of the mode's Redis, as the broadcaster builds it (a RedisCluster there)."""
    client = create_redis_or_cluster(CommonSettings.load(redis_url=redis_url))
    yield client
    await client.aclose()


@pytest.fixture(scope="module")
def make_settings(test_env: TestEnv, redis_url: str) -> SettingsFactory:
    """Settings on this run's slice with a board and a consumer group of their own."""

    def factory(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:8]
        values: dict[str, Any] = {
            **test_env.overrides(),
            "redis_url": redis_url,
            "redis_prefix": f"{test_env.redis_prefix}bc-{tag}:",
            "group_id_prefix": f"{test_env.topic_prefix}broadcaster",
            "replica_id": tag,
            "log_json": False,
        }
        values.update(overrides)
        return Settings.load(**values)

    return factory


@pytest.fixture(scope="module")
async def pg_module(test_env: TestEnv) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this run's database shared by a module's fixtures."""
    conn = await asyncpg.connect(test_env.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def producer(test_env: TestEnv) -> AsyncIterator[AIOKafkaProducer]:
    """An idempotent producer on the real broker."""
    # As the score service, the one writer of ScoreChanged.
    settings = CommonSettings.load(**test_env.overrides(), **test_env.kafka_user("score"))
    client = make_producer(settings, client_id="bc-test")
    await client.start()
    yield client
    await client.stop()


@pytest.fixture
def send(producer: AIOKafkaProducer, test_env: TestEnv) -> Send:
    """Produce a ScoreChanged to the run's changed topic, keyed by user id."""
    topic = Topics(test_env.topic_prefix).changed

    async def produce(change: ScoreChanged) -> None:
        await producer.send_and_wait(
            topic,
            encode(ScoreChangedEvent.wrap(change, source="/test")),
            key=str(change.user_id).encode(),
            headers=inject_headers(),
        )

    return produce


@pytest.fixture
async def board(redis_client: RedisClient, test_env: TestEnv) -> AsyncIterator[RedisBoard]:
    """An empty, built board under a prefix of its own."""
    board = RedisBoard(redis_client, f"{test_env.redis_prefix}board-test-{uuid.uuid4().hex[:8]}:")
    await board.mark_built({"by": "test"})
    yield board
    await redis_client.delete(*board.keys.board)
