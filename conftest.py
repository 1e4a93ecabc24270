"""Session fixtures: real PostgreSQL, Redis and Kafka for every test run.

When a Docker engine answers, testcontainers starts them; otherwise the local servers of
``scripts/infra.py`` are used (started if not running). Each run gets its own database, topic
prefix and Redis key prefix, so runs and their data never meet.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from common.settings import CommonSettings
from testkit.env import LOCAL_INFRA, Infra, TestEnv, create_test_env, drop_test_env

ROOT = Path(__file__).resolve().parent
TEST_PARTITIONS = 4


def _docker_engine_answers() -> bool:
    if os.environ.get("SCOREBOARD_TEST_INFRA") == "local":
        return False
    if not (os.environ.get("DOCKER_HOST") or Path("/var/run/docker.sock").exists()):
        return False
    import docker

    try:
        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def infra() -> Iterator[Infra]:
    """Real servers: testcontainers when Docker answers, else the local processes."""
    if _docker_engine_answers():
        from testcontainers.kafka import KafkaContainer
        from testcontainers.postgres import PostgresContainer
        from testcontainers.redis import RedisContainer

        with (
            PostgresContainer("postgres:15-alpine", driver=None) as pg,
            RedisContainer("redis:7-alpine") as rd,
            KafkaContainer("apache/kafka:3.9.1").with_kraft() as kf,
        ):
            yield Infra(
                postgres_admin_dsn=pg.get_connection_url(),
                redis_url=f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0",
                kafka_bootstrap=kf.get_bootstrap_server(),
                kafka_security_protocol="PLAINTEXT",  # no SASL there: ACL tests skip
                postgres_service_roles=False,  # services use the owner there
            )
        return
    if not (_port_open(5432) and _port_open(6379) and _port_open(9094)):
        subprocess.run([sys.executable, str(ROOT / "scripts" / "infra.py"), "up"], check=True)
    yield LOCAL_INFRA


@pytest.fixture(scope="session")
async def test_env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A fresh database (migrated), topic prefix and Redis key prefix for this run."""
    env = await create_test_env(infra, partitions=TEST_PARTITIONS)
    yield env
    await drop_test_env(infra, env)


@pytest.fixture(scope="session")
def common_settings(test_env: TestEnv) -> CommonSettings:
    """Shared settings pointing at this run's slice (as Kafka's admin: no service of its own)."""
    return CommonSettings.load(**test_env.overrides(), **test_env.kafka_user("admin"))


@pytest.fixture
async def pg(test_env: TestEnv) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this run's database."""
    conn = await asyncpg.connect(test_env.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def redis_client(test_env: TestEnv) -> AsyncIterator[aioredis.Redis]:
    """A Redis client on the real server (keys under ``test_env.redis_prefix``)."""
    client = aioredis.from_url(test_env.redis_url)
    yield client
    await client.aclose()
