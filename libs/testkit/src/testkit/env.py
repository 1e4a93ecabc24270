"""Test-run plumbing shared by the root conftest and the suites (like aiohttp.test_utils)."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from common.db_access import local_db_password
from common.db_access import role as db_role
from common.kafka import KafkaAuth, ensure_topics, local_kafka_password, make_admin, topic_specs
from common.kafka_access import ADMIN, delete_acls, ensure_acls, grants
from common.migrate import migrate
from common.redis_access import SERVICES as REDIS_SERVICES
from common.redis_access import ensure_users as ensure_redis_users
from common.redis_access import local_redis_password, save_acl


def kafka_test_auth(protocol: str = "SASL_PLAINTEXT", user: str = ADMIN) -> KafkaAuth:
    """``user`` with its development password on a local broker (scripts/infra.py's users)."""
    return KafkaAuth(protocol, "SCRAM-SHA-512", user, local_kafka_password(user))


@dataclass(frozen=True)
class Infra:
    """Where the real servers of this run listen."""

    postgres_admin_dsn: str  # a role that may create databases
    redis_url: str
    kafka_bootstrap: str
    # SASL_PLAINTEXT: the users of scripts/infra.py with their development passwords, ACLs
    # enforced; PLAINTEXT: a broker without authentication (testcontainers'), no ACLs.
    kafka_security_protocol: str = "SASL_PLAINTEXT"
    # The services' PostgreSQL roles exist (scripts/infra.py creates them; testcontainers' not).
    postgres_service_roles: bool = True


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
    kafka_security_protocol: str = "SASL_PLAINTEXT"
    postgres_service_roles: bool = True
    # This run's Redis ACL users are f"{redis_user_prefix}{service}" (common.redis_access, on
    # this run's key prefix); empty: none were made.
    redis_user_prefix: str = ""

    def redis_url_as(self, service: str) -> str:
        """Redis as ``service``'s ACL user of this run (the default user where there are none).
        Services run as subprocesses use it."""
        if not self.redis_user_prefix:
            return self.redis_url
        parts = urlsplit(self.redis_url)
        user = f"{self.redis_user_prefix}{service}"
        netloc = f"{user}:{local_redis_password(service)}@{parts.hostname}:{parts.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def postgres_dsn_as(self, service: str) -> str:
        """This run's database as ``service``'s own role (common.db_access), where the roles
        exist; the owner's DSN otherwise. Services run as subprocesses use it."""
        if not self.postgres_service_roles:
            return self.postgres_dsn
        parts = urlsplit(self.postgres_dsn)
        host = parts.netloc.rpartition("@")[2]
        netloc = f"{db_role(service)}:{local_db_password(service)}@{host}"
        return urlunsplit(parts._replace(netloc=netloc))

    def kafka_auth(self, user: str = ADMIN) -> KafkaAuth:
        """How ``user`` connects (admin: the super user of the harness and the tests' own
        readers and writers)."""
        return kafka_test_auth(self.kafka_security_protocol, user)

    def kafka_user(self, user: str) -> dict[str, str]:
        """Settings overrides that make a client ``user`` on Kafka (services default to their
        own user: these are for test clients standing in for another one)."""
        return {"kafka_username": user, "kafka_password": local_kafka_password(user)}

    def overrides(self) -> dict[str, str]:
        """Settings keyword arguments (for ``Settings.load(**overrides)``)."""
        return {
            "postgres_dsn": self.postgres_dsn,
            "redis_url": self.redis_url,
            "redis_prefix": self.redis_prefix,
            "kafka_bootstrap": self.kafka_bootstrap,
            "kafka_security_protocol": self.kafka_security_protocol,
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
    kafka_bootstrap="127.0.0.1:9094",
)


async def provision_topics(env: TestEnv, prefix: str, *, partitions: int = 4) -> None:
    """Create the topics of ``prefix`` and grant each service user its rights on them (the
    deployment's ACL matrix, common.kafka_access), as admin."""
    admin = env.kafka_auth()
    await ensure_topics(env.kafka_bootstrap, topic_specs(prefix, partitions=partitions), auth=admin)
    if env.kafka_security_protocol != "PLAINTEXT":
        await ensure_acls(env.kafka_bootstrap, admin, grants(prefix))


async def unprovision_topics(env: TestEnv, prefix: str) -> None:
    """Delete the topics and the grants of ``prefix`` (leftovers are harmless: say so)."""
    kafka = make_admin(env.kafka_bootstrap, env.kafka_auth())
    try:
        await kafka.start()
        names = [t.name for t in topic_specs(prefix)]
        await asyncio.wait_for(kafka.delete_topics(names), timeout=10)
        if env.kafka_security_protocol != "PLAINTEXT":
            await delete_acls(env.kafka_bootstrap, env.kafka_auth(), grants(prefix))
    except Exception as exc:
        print(f"could not delete test topics or their ACLs: {exc!r}", file=sys.stderr)
    finally:
        await kafka.close()


async def create_test_env(infra: Infra, *, partitions: int = 4) -> TestEnv:
    """Carve an isolated slice out of the servers: a migrated database, topics (with the
    services' ACLs on them), a key prefix."""
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
        redis_user_prefix=f"sbtest-{run_id}-",
        kafka_bootstrap=infra.kafka_bootstrap,
        topic_prefix=f"sbtest-{run_id}.",
        kafka_security_protocol=infra.kafka_security_protocol,
        postgres_service_roles=infra.postgres_service_roles,
    )
    await migrate(env.postgres_dsn)
    redis = aioredis.from_url(infra.redis_url)
    try:
        passwords = {s: local_redis_password(s) for s in REDIS_SERVICES}
        name = f"{env.redis_user_prefix}{{service}}"
        await ensure_redis_users(redis, env.redis_prefix, passwords, name=name)
    finally:
        await redis.aclose()
    await provision_topics(env, env.topic_prefix, partitions=partitions)
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
        if env.redis_user_prefix:
            await client.acl_deluser(*(f"{env.redis_user_prefix}{s}" for s in REDIS_SERVICES))
            await save_acl(client)
        keys = [k async for k in client.scan_iter(match=f"{env.redis_prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()
    await unprovision_topics(env, env.topic_prefix)
