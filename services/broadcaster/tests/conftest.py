"""Fixtures: the broadcaster in-process against the real PostgreSQL, Redis and Kafka.

Each app gets a Redis key prefix and a consumer group of its own inside the run's slice, so tests
never read each other's boards. Users and scores are seeded straight into PostgreSQL (as the auth
and score services would write them) and changes are produced to the real changed topic.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common.events import ScoreChanged, ScoreChangedEvent, Topics, encode
from common.kafka import make_producer
from common.settings import CommonSettings
from common.tracing import inject_headers
from testkit.broadcaster import Send, SettingsFactory
from testkit.env import TestEnv


@pytest.fixture(scope="session")
def make_settings(test_env: TestEnv) -> SettingsFactory:
    """Settings on this run's slice with a board and a consumer group of their own."""

    def factory(**overrides: Any) -> Settings:
        tag = uuid.uuid4().hex[:8]
        values: dict[str, Any] = {
            **test_env.overrides(),
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
async def board(redis_client: aioredis.Redis, test_env: TestEnv) -> AsyncIterator[RedisBoard]:
    """An empty, built board under a prefix of its own."""
    board = RedisBoard(redis_client, f"{test_env.redis_prefix}board-test-{uuid.uuid4().hex[:8]}:")
    await board.mark_built({"by": "test"})
    yield board
    await redis_client.delete(*board.keys.board)
