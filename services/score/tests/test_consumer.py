"""The running service in-process on real Kafka and PostgreSQL: duplicates, poison, outages."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp import test_utils
from prometheus_client.parser import text_string_to_metric_families

from common.events import ScoreChanged, ScoreChangedEvent, ScoreCommandEvent, Topics, encode
from common.migrate import migrate
from score.settings import Settings
from services.score.tests.conftest import score_settings
from services.score.tests.support import (
    Sender,
    add_users,
    applied_count,
    assert_versions_consecutive,
    changes,
    command,
    distinct_changes,
    eventually,
    read_to_end,
    read_topic,
    ready,
    running,
)
from testkit import env as testing
from testkit.env import Infra

pytestmark = pytest.mark.integration


async def metric(client: test_utils.TestClient[Any, Any], name: str, **labels: str) -> float:
    """The value of one sample on /metrics (0 when absent)."""
    async with client.get("/metrics") as resp:
        text = await resp.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


async def test_duplicates_in_the_stream_are_applied_once(
    settings: Settings, topics: Topics, sender: Sender, pg: asyncpg.Connection
) -> None:
    alice, bob = users = await add_users(pg, 2)
    once = command(alice, 5)
    # Sent before the service starts: the three copies sit next to each other in one partition
    # and arrive in the same batch.
    await sender.send([once, once, once, command(bob, 1), command(alice, 2)])
    async with running(settings) as client:

        async def applied(n: int) -> bool:
            return await applied_count(pg, users) == n

        await eventually(lambda: applied(3))
        # And again in a later batch, as a retried request would produce it.
        await sender.send([once, command(bob, 4)])
        await eventually(lambda: applied(4))
        assert await metric(client, "scoreboard_score_commands_applied_total") == 4
        assert await metric(client, "scoreboard_score_commands_duplicate_total") == 3
        # Every applied command's age is observed (duplicates are not applied again).
        assert await metric(client, "scoreboard_score_command_age_seconds_count") == 4
        records = await read_topic(settings, topics.changed, distinct_changes(4, users))

    rows = await pg.fetch("SELECT user_id, score FROM scores WHERE user_id = ANY($1)", users)
    scores = {r["user_id"]: r["score"] for r in rows}
    assert scores == {alice: 7, bob: 5}
    assert assert_versions_consecutive(changes(records, users)) == {alice: 2, bob: 2}
    # One ScoreChanged per applied command, and no more: all are marked sent, the topic has 4.
    keys = [str(u).encode() for u in users]

    async def all_sent() -> bool:
        unsent = await pg.fetchval(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND event_key = ANY($1)", keys
        )
        return bool(unsent == 0)

    await eventually(all_sent)
    assert len([r for r in await read_to_end(settings, topics.changed) if r.key in keys]) == 4


async def test_poison_goes_to_the_dlq_and_the_next_command_applies(
    settings: Settings, topics: Topics, sender: Sender, pg: asyncpg.Connection
) -> None:
    (alice,) = await add_users(pg, 1)
    key = str(alice).encode()
    garbage = b"\x00\x01 definitely not json"
    not_a_command = encode(
        ScoreChangedEvent.wrap(
            ScoreChanged(
                action_id=uuid.uuid4(),
                user_id=alice,
                username="alice",
                delta=1,
                score=1,
                version=1,
                occurred_at=command(alice).accepted_at,
            ),
            source="/elsewhere",
        )
    )
    for_nobody = encode(ScoreCommandEvent.wrap(command(uuid.uuid4(), 50), source="/gateway"))
    # All on alice's partition, ahead of her real command: the consumer must get past them.
    for value in (garbage, not_a_command, for_nobody):
        await sender.send_raw(value, key)
    good = command(alice, 7)
    await sender.send([good])

    async with running(settings) as client:

        async def scored() -> bool:
            score = await pg.fetchval("SELECT score FROM scores WHERE user_id = $1", alice)
            return bool(score == 7)

        await eventually(scored)
        dlq = await read_topic(settings, topics.dlq, lambda r: len(r) >= 3)
        for reason in ("invalid-json", "wrong-type", "unknown-user"):
            name = "scoreboard_score_commands_dead_lettered_total"
            assert await metric(client, name, reason=reason) == 1

    by_reason = {dict(r.headers)["x-error"].decode(): r for r in dlq}
    assert {k: (r.value, r.key) for k, r in by_reason.items()} == {
        "invalid-json": (garbage, key),
        "wrong-type": (not_a_command, key),
        "unknown-user": (for_nobody, key),
    }
    assert await pg.fetchval("SELECT count(*) FROM actions WHERE user_id = $1", alice) == 1


@pytest.fixture
async def own_database(infra: Infra) -> AsyncIterator[str]:
    """A database of its own, which the test can cut off without disturbing anyone else."""
    name = f"sbtest_score_outage_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(infra.postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = f"{infra.postgres_admin_dsn.rpartition('/')[0]}/{name}"
    await migrate(dsn)
    yield name
    admin = await asyncpg.connect(infra.postgres_admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_postgres_outage_mid_stream_loses_and_doubles_nothing(
    infra: Infra, test_env: testing.TestEnv, topic_prefix: str, own_database: str, sender: Sender
) -> None:
    dsn = f"{infra.postgres_admin_dsn.rpartition('/')[0]}/{own_database}"
    settings = score_settings(test_env, topic_prefix, postgres_dsn=dsn)
    topics = Topics(topic_prefix)
    admin = await asyncpg.connect(infra.postgres_admin_dsn)
    db = await asyncpg.connect(dsn)
    users = await add_users(db, 5)
    first = [command(users[i % 5], i + 1) for i in range(100)]
    second = [command(users[i % 5], i + 101) for i in range(100)]

    async def cut_off() -> None:
        await admin.execute(f'ALTER DATABASE "{own_database}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            own_database,
        )

    async def restore() -> None:
        await admin.execute(f'ALTER DATABASE "{own_database}" ALLOW_CONNECTIONS true')

    try:
        async with running(settings) as client:
            await sender.send(first)
            await eventually(lambda: _applied_is(db, users, 100))
            await cut_off()
            await sender.send(second)

            async def unready() -> bool:
                body = await ready(client)
                return body["http_status"] == 503 and "failed" in body["checks"]["apply"]

            await eventually(unready)
            await restore()
            await db.close()  # it was cut off too
            db = await asyncpg.connect(dsn)
            await eventually(lambda: _applied_is(db, users, 200))

            async def ready_again() -> bool:
                return bool((await ready(client))["http_status"] == 200)

            await eventually(ready_again)
            assert await metric(client, "scoreboard_score_failures_total", stage="apply") >= 1
            records = await read_topic(settings, topics.changed, distinct_changes(200, users))
    finally:
        await restore()
        await admin.close()

    total = await db.fetchval("SELECT sum(score) FROM scores")
    await db.close()
    assert total == sum(c.points for c in first + second)
    events = changes(records, users)
    assert len({(e.data.user_id, e.data.version) for e in events}) == 200
    assert assert_versions_consecutive(events) == dict.fromkeys(users, 40)


async def _applied_is(conn: asyncpg.Connection, users: list[uuid.UUID], n: int) -> bool:
    return await applied_count(conn, users) == n
