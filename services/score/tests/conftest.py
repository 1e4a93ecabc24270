"""Score service fixtures: topics of its own per test (so consumers see only that test's
commands), settings for fast retries, a command sender and a pool, all on the real servers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from common.command_signing import CommandSigner
from common.events import Topics
from common.kafka import make_producer, started
from common.postgres import create_pool
from score.settings import Settings
from services.score.tests.support import TEST_CATALOG, Sender
from testkit.env import TestEnv, provision_topics, unprovision_topics

PARTITIONS = 4


@pytest.fixture
async def topic_prefix(test_env: TestEnv) -> AsyncIterator[str]:
    """Fresh commands/changed/DLQ topics for one test, deleted afterwards."""
    prefix = f"{test_env.topic_prefix}score-{uuid.uuid4().hex[:8]}."
    await provision_topics(test_env, prefix, partitions=PARTITIONS)  # with the services' ACLs
    yield prefix
    await unprovision_topics(test_env, prefix)


def score_settings(test_env: TestEnv, topic_prefix: str, **overrides: object) -> Settings:
    """Settings on this run's database and the test's topics, with quick retries."""
    values: dict[str, object] = {
        **test_env.overrides(),
        "topic_prefix": topic_prefix,
        "group_id": f"{topic_prefix}score",
        "postgres_pool_max": 2,
        "retry_base_s": 0.05,
        "retry_cap_s": 0.5,
        "relay_poll_ms": 200,
        "relay_standby_poll_s": 0.2,
        "shutdown_grace_s": 5.0,
        "action_catalog": TEST_CATALOG,
    }
    values.update(overrides)
    return Settings.load(**values)


@pytest.fixture
def settings(test_env: TestEnv, topic_prefix: str) -> Settings:
    """This test's score settings."""
    return score_settings(test_env, topic_prefix)


@pytest.fixture
def topics(settings: Settings) -> Topics:
    """This test's topic names."""
    return Topics(settings.topic_prefix)


@pytest.fixture
async def sender(
    test_env: TestEnv, topic_prefix: str, settings: Settings, topics: Topics
) -> AsyncIterator[Sender]:
    """Produces commands to this test's topic, signed with the run's key, as the gateway
    (the commands' one writer)."""
    as_gateway = score_settings(test_env, topic_prefix, **test_env.kafka_user("gateway"))
    producer = make_producer(as_gateway, client_id="score-test")
    async with started(producer):
        yield Sender(producer, topics, CommandSigner(settings.command_keys[0]))


@pytest.fixture
async def pool(test_env: TestEnv) -> AsyncIterator[asyncpg.Pool]:
    """A pool on this run's database."""
    pool = await create_pool(Settings.load(**test_env.overrides(), postgres_pool_max=2))
    yield pool
    await pool.close()
