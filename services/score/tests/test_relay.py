"""The outbox relay on real PostgreSQL and Kafka: order, resends after a restart, one leader."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from common.events import ScoreChangedEvent, Topics
from common.kafka import make_producer, started
from score.commands import Command, Delivery
from score.metrics import ScoreMetrics
from score.outbox import Outbox
from score.relay import OutboxRelay
from score.settings import Settings
from score.store import ScoreStore
from services.score.tests.support import add_users, command, eventually, read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """The relay's idempotent producer."""
    producer = make_producer(settings, client_id="score-relay-test")
    async with started(producer):
        yield producer


@contextlib.asynccontextmanager
async def relaying(relay: OutboxRelay) -> AsyncIterator[asyncio.Event]:
    """Run a relay until the block ends (the event stops it early)."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def apply(pool: asyncpg.Pool, users: list[uuid.UUID], n: int) -> None:
    """Apply ``n`` commands round-robin over ``users`` (rows land in the outbox)."""
    cmds = [
        Command(Delivery("t", 0, i, None, None), command(users[i % len(users)], i + 1))
        for i in range(n)
    ]
    await ScoreStore(pool).apply(cmds)


def _unsent(conn: asyncpg.Connection, users: list[uuid.UUID]) -> Any:
    return conn.fetchval(
        "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND event_key = ANY($1)",
        [str(u).encode() for u in users],
    )


async def test_a_restarted_relay_resends_the_same_events_never_new_versions(
    settings: Settings,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
) -> None:
    users = await add_users(pg, 3)
    await apply(pool, users, 30)

    async def all_sent() -> bool:
        return bool(await _unsent(pg, users) == 0)

    async with relaying(OutboxRelay(producer, settings, ScoreMetrics.create(CollectorRegistry()))):
        await eventually(all_sent)
    # A crash after publishing but before marking: the last ten rows count as unsent again.
    await pg.execute(
        "UPDATE outbox SET sent_at = NULL WHERE id IN (SELECT id FROM outbox"
        " WHERE event_key = ANY($1) ORDER BY id DESC LIMIT 10)",
        [str(u).encode() for u in users],
    )
    async with relaying(OutboxRelay(producer, settings, ScoreMetrics.create(CollectorRegistry()))):
        await eventually(all_sent)

    keys = {str(u).encode() for u in users}
    records = await read_topic(
        settings,
        Topics(settings.topic_prefix).changed,
        lambda rs: len([r for r in rs if r.key in keys]) >= 40,
    )
    mine = [r for r in records if r.key in keys]
    assert len(mine) == 40
    first_seen: dict[tuple[bytes, int], bytes] = {}
    order: dict[bytes, list[int]] = {}
    for r in mine:
        event = ScoreChangedEvent.model_validate_json(r.value)
        version_key = (r.key, event.data.version)
        if version_key in first_seen:
            assert first_seen[version_key] == r.value  # a resend is the same event, byte for byte
            continue
        first_seen[version_key] = r.value
        order.setdefault(r.key, []).append(event.data.version)
    assert len(first_seen) == 30
    assert all(versions == list(range(1, 11)) for versions in order.values())  # in order


async def test_one_relay_publishes_at_a_time_and_a_standby_takes_over(
    settings: Settings,
    producer: AIOKafkaProducer,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
) -> None:
    users = await add_users(pg, 2)
    first = OutboxRelay(producer, settings, ScoreMetrics.create(CollectorRegistry()))
    second = OutboxRelay(producer, settings, ScoreMetrics.create(CollectorRegistry()))

    async def exactly_one_leads() -> bool:
        assert not (first.leading and second.leading)
        return first.leading or second.leading

    async def all_sent() -> bool:
        assert not (first.leading and second.leading)
        return bool(await _unsent(pg, users) == 0)

    stops = {id(r): asyncio.Event() for r in (first, second)}
    tasks = {id(r): asyncio.create_task(r.run(stops[id(r)])) for r in (first, second)}
    try:
        await eventually(exactly_one_leads)
        leader, standby = (first, second) if first.leading else (second, first)
        await apply(pool, users, 10)
        await eventually(all_sent)
        stops[id(leader)].set()
        await asyncio.wait_for(tasks[id(leader)], 10)
        await eventually(lambda: _leads(standby))
        await apply(pool, users, 10)
        await eventually(all_sent)
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 10)


async def _leads(relay: OutboxRelay) -> bool:
    return relay.leading


async def test_sent_rows_are_deleted_after_the_retention(pg: asyncpg.Connection) -> None:
    key = str(uuid.uuid4()).encode()
    ids = [
        await pg.fetchval(
            "INSERT INTO outbox (event_key, payload, sent_at)"
            " VALUES ($1, '{}', now() - $2::interval) RETURNING id",
            key,
            age,
        )
        for age in (timedelta(hours=2), timedelta(minutes=1))
    ]
    unsent = await pg.fetchval(
        "INSERT INTO outbox (event_key, payload) VALUES ($1, '{}') RETURNING id", key
    )
    assert await Outbox(pg).purge(3600) >= 1
    left = await pg.fetch("SELECT id FROM outbox WHERE event_key = $1 ORDER BY id", key)
    assert [r["id"] for r in left] == [ids[1], unsent]
    await pg.execute("DELETE FROM outbox WHERE event_key = $1", key)
