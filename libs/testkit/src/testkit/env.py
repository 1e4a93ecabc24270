"""Test-run plumbing shared by the root conftest and the suites (like aiohttp.test_utils)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient

from common.kafka import ensure_topics, topic_specs
from common.migrate import migrate


@dataclass(frozen=True)
class Infra:
    """Where the real servers of this run listen."""

    postgres_admin_dsn: str  # a role that may create databases
    redis_url: str
    kafka_bootstrap: str


# The command-signing key of test runs (common.command_signing): every service of a run, and
# every test that produces commands itself, signs or verifies with it.
TEST_COMMAND_KEYS = "test:c2NvcmVib2FyZC10ZXN0LWNvbW1hbmQta2V5LTAwMDE="


@dataclass(frozen=True)
class TestEnv:
    """This run's isolated slice of the servers, as ``SCOREBOARD_*`` settings."""

    __test__ = False  # not a test class, whatever its name says

    postgres_dsn: str
    redis_url: str
    redis_prefix: str
    kafka_bootstrap: str
    topic_prefix: str
    command_keys: str = TEST_COMMAND_KEYS

    def overrides(self) -> dict[str, str]:
        """Settings keyword arguments (for ``Settings.load(**overrides)``)."""
        return {
            "postgres_dsn": self.postgres_dsn,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "kafka_bootstrap": self.kafka_bootstrap,
            "topic_prefix": self.topic_prefix,
            "command_keys": self.command_keys,
            # Operator endpoints on the service port: in-process apps have only that one, and
            # subprocesses need no second port of their own.
            "admin_port": "0",
        }

    def environ(self) -> dict[str, str]:
        """The same settings as environment variables, for services run as subprocesses."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
        env.update({f"SCOREBOARD_{k.upper()}": v for k, v in self.overrides().items()})
        return env


LOCAL_INFRA = Infra(
    postgres_admin_dsn="postgresql://scoreboard:scoreboard@127.0.0.1:5432/scoreboard",
    redis_url="redis://127.0.0.1:6379/0",
    kafka_bootstrap="127.0.0.1:9092",
)


async def create_test_env(infra: Infra, *, partitions: int = 4) -> TestEnv:
    """Carve an isolated slice out of the servers: a migrated database, topics, a key prefix."""
    run_id = uuid.uuid4().hex[:10]
    db = f"sbtest_{run_id}"
    admin = await asyncpg.connect(infra.postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{db}"')
    finally:
        await admin.close()
    base, _, _ = infra.postgres_admin_dsn.rpartition("/")
    env = TestEnv(
        postgres_dsn=f"{base}/{db}",
        redis_url=infra.redis_url,
        redis_prefix=f"sbtest:{run_id}:",
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=f"sbtest-{run_id}.",
    )
    await migrate(env.postgres_dsn)
    await ensure_topics(env.kafka_bootstrap, topic_specs(env.topic_prefix, partitions=partitions))
    return env


async def drop_test_env(infra: Infra, env: TestEnv) -> None:
    """Remove the slice: database, Redis keys, topics."""
    db = env.postgres_dsn.rpartition("/")[2]
    admin = await asyncpg.connect(infra.postgres_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    finally:
        await admin.close()
    client = aioredis.from_url(infra.redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{env.redis_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    kafka = AIOKafkaAdminClient(bootstrap_servers=env.kafka_bootstrap)
    try:
        await kafka.start()
        names = [t.name for t in topic_specs(env.topic_prefix)]
        await asyncio.wait_for(kafka.delete_topics(names), timeout=10)
    except Exception as exc:  # leftover topics are harmless; say so instead of failing teardown
        print(f"could not delete test topics: {exc!r}", file=sys.stderr)
    finally:
        await kafka.close()
