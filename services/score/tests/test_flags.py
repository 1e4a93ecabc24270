"""The anomaly flagger on real Kafka and PostgreSQL: 50 honest simulated players, one fast one
and one honest burst, as ScoreChanged events on the topic the score service's relay writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from common.events import (
    PlayerFlagged,
    PlayerFlaggedEvent,
    ScoreChanged,
    ScoreChangedEvent,
    Topics,
    encode,
)
from common.kafka import make_producer, started
from score.flag_store import FlagStore
from score.flags import PlayerFlagger
from score.metrics import FlagMetrics
from score.settings import Settings
from services.score.tests.support import add_users, read_to_end, read_topic

pytestmark = pytest.mark.integration

QUEST, PUZZLE, TAP, DAILY = 50, 20, 1, 10  # the catalog's points (gateway/catalog.py)


@dataclass
class Player:
    """Earns ``points`` every ``interval_s`` from ``start_s`` on (with think-time jitter)."""

    user_id: uuid.UUID
    interval_s: float
    points: int
    start_s: float = 0.0
    jitter: float = 0.3
    next_s: float = 0.0
    version: int = 0
    score: int = 0
    burst: list[int] = field(default_factory=list)  # points earned at once at start_s


class Players:
    """Publishes the players' ScoreChanged events as the relay would (key = user id)."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self._producer = producer
        self._topics = topics
        self.players: list[Player] = []

    def add(self, user_id: uuid.UUID, interval_s: float, points: int, **kw: Any) -> Player:
        player = Player(user_id, interval_s, points, **kw)
        player.next_s = player.start_s + random.uniform(0, interval_s)
        self.players.append(player)
        return player

    async def _send(self, player: Player, points: int) -> None:
        player.version += 1
        player.score += points
        change = ScoreChanged(
            action_id=uuid.uuid4(),
            user_id=player.user_id,
            username=f"p_{player.user_id.hex[:16]}",
            delta=points,
            score=player.score,
            version=player.version,
            occurred_at=datetime.now(UTC),
        )
        await self._producer.send(
            self._topics.changed,
            encode(ScoreChangedEvent.wrap(change, source="/score")),
            key=str(player.user_id).encode(),
        )

    async def run(self, started: float) -> None:
        """Until cancelled: every 50 ms, send what is due."""
        while True:
            now = time.monotonic() - started
            for player in self.players:
                if player.burst and now >= player.start_s:
                    for points in player.burst:
                        await self._send(player, points)
                    player.burst = []
                while player.next_s <= now:
                    await self._send(player, player.points)
                    jitter = random.uniform(0, player.jitter) * player.interval_s
                    player.next_s += player.interval_s + jitter
            await asyncio.sleep(0.05)


@pytest.fixture
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    """A producer as the score service's (its Kafka user writes ScoreChanged and the flags)."""
    producer = make_producer(settings, client_id="score-flags-test")
    async with started(producer):
        yield producer


@contextlib.asynccontextmanager
async def flagger_running(
    settings: Settings, producer: AIOKafkaProducer, pool: asyncpg.Pool
) -> AsyncIterator[PlayerFlagger]:
    """The score service's flagging task, as app.py runs it."""
    registry = CollectorRegistry()
    flagger = PlayerFlagger(settings, producer, FlagStore(pool), FlagMetrics.create(registry))
    stop = asyncio.Event()
    task = asyncio.create_task(flagger.run(stop))
    try:
        async with asyncio.timeout(30):
            await flagger.assigned.wait()
        yield flagger
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)


async def test_fast_player_among_fifty_honest_is_flagged_within_ten_seconds(
    settings: Settings, topics: Topics, producer: AIOKafkaProducer, pool: asyncpg.Pool
) -> None:
    random.seed(2024)
    async with pool.acquire() as conn:
        honest_ids = await add_users(conn, 50)
        fast_id, burst_id = await add_users(conn, 2)
    players = Players(producer, topics)
    for user_id in honest_ids:  # 2-25 points/s, as players of each type pace themselves
        kind = random.random()
        if kind < 0.5:
            players.add(user_id, random.uniform(2.0, 5.0), QUEST)
        elif kind < 0.8:
            players.add(user_id, random.uniform(1.0, 3.0), PUZZLE)
        else:
            players.add(user_id, random.uniform(0.1, 0.4), TAP)
    fast_from = 4.0  # 50 points every 0.5 s: 100 points/s, 4x the best honest rate
    players.add(fast_id, 0.5, QUEST, start_s=fast_from, jitter=0.0)
    # Idle, then the most the earning rules let a player do: the daily login and one action of
    # slack at once, then quests back to back.
    players.add(burst_id, 2.0, QUEST, start_s=fast_from, jitter=0.0, burst=[DAILY, QUEST])

    async with flagger_running(settings, producer, pool):
        started = time.monotonic()
        driver = asyncio.create_task(players.run(started))
        try:
            fast_key = str(fast_id).encode()
            records = await read_topic(
                settings, topics.flagged, lambda rs: any(r.key == fast_key for r in rs), 20
            )
            records = [r for r in records if r.key == fast_key]
            flagged_after = time.monotonic() - started - fast_from
            # Keep playing a while: nobody else may be flagged in the meantime.
            await asyncio.sleep(8.0)
        finally:
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await driver

    # Only this test's players: the flagger also sweeps flags other tests left unsent in the
    # run's shared database onto this test's topic.
    ours = {*honest_ids, fast_id, burst_id}
    events = [
        event
        for r in await read_to_end(settings, topics.flagged)
        if (event := PlayerFlaggedEvent.model_validate_json(r.value)).data.user_id in ours
    ]
    print(f"flagged {flagged_after:.1f} s after the fast player started; {events[0].data}")
    assert flagged_after <= 10.0
    assert [e.data.user_id for e in events] == [fast_id]
    flag = events[0].data
    assert flag.rate > settings.flags_rate_floor
    assert flag.z > settings.flags_z_threshold
    assert flag.active_players >= 50
    assert json.loads(records[0].value)["id"] == str(flag.flag_id)
    assert records[0].key == str(fast_id).encode()
    assert ("content-type", b"application/cloudevents+json") in records[0].headers

    rows = await pool.fetch(
        "SELECT * FROM player_flags WHERE user_id = ANY($1)",
        [
            *honest_ids,
            fast_id,
            burst_id,
        ],
    )
    assert [(r["user_id"], r["status"], r["reason"]) for r in rows] == [
        (fast_id, "open", "earning_rate")
    ]
    row = rows[0]
    assert row["flag_id"] == flag.flag_id
    assert row["published_at"] is not None
    assert (row["rate"], row["z"], row["median"], row["mad"]) == (
        flag.rate,
        flag.z,
        flag.median,
        flag.mad,
    )


async def test_an_open_flag_is_not_raised_twice_and_unsent_ones_are_found(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with pool.acquire() as conn:
        [user_id] = await add_users(conn, 1)
    store = FlagStore(pool)

    def flag(at: datetime) -> PlayerFlagged:
        return PlayerFlagged(
            flag_id=uuid.uuid4(),
            user_id=user_id,
            username="p_x",
            rate=100.0,
            z=12.0,
            median=10.0,
            mad=3.0,
            active_players=51,
            tau_s=5.0,
            flagged_at=at,
        )

    old = datetime(2025, 1, 1, tzinfo=UTC)
    first = flag(old)
    assert await store.raise_flag(first)
    assert not await store.raise_flag(flag(old))  # one open flag per player
    assert [f.flag_id for f in await store.unpublished(older_than_s=10)] == [first.flag_id]
    await store.mark_published(first.flag_id)
    assert await store.unpublished(older_than_s=10) == []
    await pool.execute("UPDATE player_flags SET status = 'cleared' WHERE user_id = $1", user_id)
    assert await store.raise_flag(flag(old))  # reviewed: a new episode may be flagged
    gone = flag(old).model_copy(update={"user_id": uuid.uuid4()})
    assert not await store.raise_flag(gone)  # a deleted player is not flagged
