"""Least privilege in the stores, on the real servers: each service's PostgreSQL role and Redis
user can do its job and nothing the others own (common.db_access, common.redis_access)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from auth.settings import Settings as AuthSettings
from broadcaster.settings import Settings as BroadcasterSettings
from common import db_access, redis_access
from common.keyspace import BoardKeys, done_key, revoked_session_key, ticket_key
from score.settings import Settings as ScoreSettings
from testkit.env import TestEnv
from testkit.stack import infra

pytestmark = pytest.mark.integration


def _as_role(env: TestEnv, service: str) -> str:
    """This run's database, as ``service``'s role with its development password."""
    parts = urlsplit(env.postgres_dsn)
    role = db_access.role(service)
    password = infra.DB_SERVICE_ROLES[role]
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{password}@{host}"))


@pytest.fixture
async def connect(test_env: TestEnv) -> AsyncIterator[dict[str, asyncpg.Connection]]:
    """A connection per service role (skipped where the roles were not created)."""
    conns: dict[str, asyncpg.Connection] = {}
    try:
        for service in db_access.SERVICES:
            try:
                conns[service] = await asyncpg.connect(_as_role(test_env, service))
            except asyncpg.InvalidAuthorizationSpecificationError:
                # Only testcontainers' PostgreSQL (a Docker engine, no scripts/infra.py) lacks the
                # roles; on the local servers, as in CI, a missing role is a failure.
                if test_env.kafka_security_protocol != "PLAINTEXT":
                    raise
                pytest.skip("testcontainers' PostgreSQL has no service roles (infra.py makes them)")
        yield conns
    finally:
        for conn in conns.values():
            await conn.close()


async def _user(pg: asyncpg.Connection) -> uuid.UUID:
    user_id = uuid.uuid4()
    await pg.execute(
        "INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, 'x')",
        user_id,
        f"u_{user_id.hex[:12]}",
    )
    await pg.execute(
        "INSERT INTO scores (user_id, score, version, reached_at) VALUES ($1, 5, 1, now())",
        user_id,
    )
    return user_id


async def test_the_broadcaster_reads_the_board_and_cannot_change_users(
    connect: dict[str, asyncpg.Connection], pg: asyncpg.Connection
) -> None:
    user_id = await _user(pg)
    broadcaster = connect["broadcaster"]
    row = await broadcaster.fetchrow(
        "SELECT u.username, s.score FROM scores s JOIN users u USING (user_id) WHERE user_id = $1",
        user_id,
    )
    assert row is not None
    assert row["score"] == 5
    for sql in (
        "UPDATE users SET banned = false WHERE user_id = $1",  # lift a ban
        "UPDATE users SET password_hash = 'mine' WHERE user_id = $1",
        "UPDATE scores SET score = 1000000 WHERE user_id = $1",
        "DELETE FROM users WHERE user_id = $1",
        "SELECT password_hash FROM users WHERE user_id = $1",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await broadcaster.execute(sql, user_id)


async def test_no_service_changes_the_schema(connect: dict[str, asyncpg.Connection]) -> None:
    for service, conn in connect.items():
        for sql in (
            f"CREATE TABLE mine_{service} (x int)",
            "ALTER TABLE scores ADD COLUMN bonus int",
            "DROP TABLE outbox",
            "TRUNCATE actions",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(sql)


async def test_each_service_writes_only_its_own_tables(
    connect: dict[str, asyncpg.Connection], pg: asyncpg.Connection
) -> None:
    user_id = await _user(pg)
    # score applies points; auth may not.
    await connect["score"].execute("UPDATE scores SET score = 6 WHERE user_id = $1", user_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await connect["auth"].execute("UPDATE scores SET score = 7 WHERE user_id = $1", user_id)
    # auth bans; score may not, nor read password hashes.
    await connect["auth"].execute("UPDATE users SET banned = true WHERE user_id = $1", user_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await connect["score"].execute(
            "UPDATE users SET banned = false WHERE user_id = $1", user_id
        )
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await connect["score"].execute("SELECT password_hash FROM users")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await connect["score"].execute("SELECT * FROM login_sessions")


async def test_every_table_is_granted_to_some_service(pg: asyncpg.Connection) -> None:
    # A migration that adds a table must say who may use it (common.db_access.GRANTS).
    tables = {
        r["name"]
        for r in await pg.fetch(
            """SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'
               UNION SELECT viewname FROM pg_views WHERE schemaname = 'public'"""
        )
    }
    granted = set().union(*(g.keys() for g in db_access.GRANTS.values()))
    assert tables - {"schema_migrations"} <= granted


def test_the_local_roles_are_the_services_default_logins() -> None:
    for settings in (AuthSettings(), ScoreSettings(), BroadcasterSettings()):
        dsn = urlsplit(settings.postgres_dsn)
        assert dsn.username == db_access.role(settings.service_name)
        assert infra.DB_SERVICE_ROLES[dsn.username] == dsn.password


@pytest.fixture
async def redis_as(test_env: TestEnv) -> AsyncIterator[dict[str, aioredis.Redis]]:
    """A client per service user, the users made for this run's prefix (and removed after)."""
    admin = aioredis.from_url(test_env.redis_url)
    run = uuid.uuid4().hex[:8]
    passwords = {s: f"{s}-{run}" for s in redis_access.SERVICES}
    names = await redis_access.ensure_users(
        admin, test_env.redis_prefix, passwords, name=f"sbtest-{run}-{{service}}"
    )
    parts = urlsplit(test_env.redis_url)
    clients = {
        s: aioredis.from_url(
            urlunsplit(
                parts._replace(netloc=f"{name}:{passwords[s]}@{parts.hostname}:{parts.port}")
            )
        )
        for s, name in zip(redis_access.SERVICES, names, strict=True)
    }
    yield clients
    for client in clients.values():
        await client.aclose()
    await admin.acl_deluser(*names)
    await admin.aclose()


async def test_the_gateway_cannot_write_board_keys(
    redis_as: dict[str, aioredis.Redis], test_env: TestEnv
) -> None:
    gateway, broadcaster = redis_as["gateway"], redis_as["broadcaster"]
    board = BoardKeys.for_prefix(test_env.redis_prefix)
    action = uuid.uuid4()
    await gateway.set(ticket_key(test_env.redis_prefix, action), "{}", ex=60)
    await gateway.set(done_key(test_env.redis_prefix, action), "c:1:g", ex=60)
    for write in (
        gateway.zadd(board.rank, {"mallory": 1_000_000}),
        gateway.hset(board.users, "mallory", "{}"),
        gateway.delete(board.rank),
        gateway.publish(f"{test_env.redis_prefix}elsewhere", "x"),
    ):
        with pytest.raises(NoPermissionError):
            await write
    # The broadcaster may: the board is its own.
    await broadcaster.zadd(board.rank, {"someone": 1})
    await broadcaster.delete(board.rank)


async def test_each_redis_user_keeps_to_its_keys(
    redis_as: dict[str, aioredis.Redis], test_env: TestEnv
) -> None:
    p = test_env.redis_prefix
    session = revoked_session_key(p, uuid.uuid4())
    await redis_as["auth"].set(session, "1", ex=60)
    assert await redis_as["gateway"].get(session) == b"1"  # the gateway reads revocations
    with pytest.raises(NoPermissionError):
        await redis_as["broadcaster"].get(session)
    await redis_as["broadcaster"].delete(ticket_key(p, uuid.uuid4()))  # once applied
    with pytest.raises(NoPermissionError):
        await redis_as["broadcaster"].get(f"{p}rl:user:x")
    with pytest.raises(NoPermissionError):
        await redis_as["auth"].get(f"{p}rl:user:x")
    for client in redis_as.values():
        with pytest.raises(NoPermissionError):
            await client.flushall()
        with pytest.raises(NoPermissionError):
            await client.keys("*")
    # Another deployment's prefix is out of reach.
    with pytest.raises(NoPermissionError):
        await redis_as["gateway"].set(f"other{p}ticket:x", "{}")
