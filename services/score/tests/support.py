"""Test helpers for the score service: players in the users table, commands on a real topic
(signed as the gateway signs them), and a reader for what reached a topic."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from common.command_signing import CommandSigner
from common.events import ScoreChangedEvent, ScoreCommand, ScoreCommandEvent, Topics, encode
from score.app import create_app
from score.outbox import OUTBOX_ID_HEADER
from score.settings import Settings
from testkit.env import kafka_test_auth

Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def add_users(conn: Conn, n: int) -> list[uuid.UUID]:
    """``n`` players, inserted as the auth service would (the score service only reads them)."""
    ids = [uuid.uuid4() for _ in range(n)]
    await conn.executemany(
        "INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, 'x')",
        [(u, f"p_{u.hex[:16]}") for u in ids],
    )
    return ids


# The score service applies only the catalog's points, and the tests want commands of any
# worth: their catalog has a type per worth, and command() picks the type of its points.
MAX_POINTS = 1000
TEST_CATALOG = {f"worth_{p}": {"points": p} for p in range(1, MAX_POINTS + 1)}


def command(
    user_id: uuid.UUID, points: int = 5, action_id: uuid.UUID | None = None
) -> ScoreCommand:
    """A command as the gateway would accept it (its type is worth ``points`` in TEST_CATALOG)."""
    assert 1 <= points <= MAX_POINTS, f"no action type of TEST_CATALOG is worth {points}"
    now = datetime.now(UTC)
    return ScoreCommand(
        action_id=action_id or uuid.uuid4(),
        user_id=user_id,
        action_type=f"worth_{points}",
        points=points,
        issued_at=now - timedelta(seconds=2),
        accepted_at=now,
    )


@dataclass
class Sender:
    """Produces to this test's commands topic, as the gateway does (key = user id, signed)."""

    producer: AIOKafkaProducer
    topics: Topics
    signer: CommandSigner

    async def send(self, cmds: Iterable[ScoreCommand]) -> None:
        """Send commands (in order) and wait until Kafka has all of them."""
        acks = []
        for c in cmds:
            value = encode(ScoreCommandEvent.wrap(c, source="/gateway"))
            key = str(c.user_id).encode()
            headers = [("traceparent", TRACEPARENT.encode()), self.signer.header(key, value)]
            acks.append(
                await self.producer.send(self.topics.commands, value, key=key, headers=headers)
            )
        await asyncio.gather(*acks)

    async def send_raw(
        self,
        value: bytes | None,
        key: bytes | None,
        *,
        sign: bool = True,
        headers: Iterable[tuple[str, bytes | None]] = (),
    ) -> None:
        """Send arbitrary bytes (poison), signed unless ``sign`` is false, with extra headers."""
        extra = [self.signer.header(key, value)] if sign else []
        await self.producer.send_and_wait(
            self.topics.commands, value, key=key, headers=[*headers, *extra]
        )


async def read_topic(
    settings: Settings, topic: str, done: Callable[[list[Any]], bool], timeout_s: float = 30
) -> list[Any]:
    """Read ``topic`` from the beginning until ``done(records)`` holds; returns the records."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_test_auth(settings.kafka_security_protocol).aiokafka(),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    records: list[Any] = []
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while not done(records):
                batch = await consumer.getmany(timeout_ms=200)
                for recs in batch.values():
                    records.extend(recs)
    finally:
        await consumer.stop()
    return records


async def read_to_end(
    settings: Settings,
    topic: str,
    *,
    isolation_level: str = "read_committed",
    timeout_s: float = 30,
) -> list[Any]:
    """Everything on ``topic`` now, read from the beginning to the end offsets (for
    read_committed: the last stable offset, so no transaction may be left open)."""
    consumer = AIOKafkaConsumer(
        topic,
        **kafka_test_auth(settings.kafka_security_protocol).aiokafka(),
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level=isolation_level,
    )
    records: list[Any] = []
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            ends = await consumer.end_offsets(tps)
            left = {tp for tp in tps if ends[tp] > 0}
            while left:
                for tp, recs in (await consumer.getmany(*left, timeout_ms=200)).items():
                    records.extend(r for r in recs if r.offset < ends[tp])
                for tp in list(left):
                    if await consumer.position(tp) >= ends[tp]:
                        left.discard(tp)
    finally:
        await consumer.stop()
    return records


def outbox_ids(records: list[Any]) -> list[int]:
    """The outbox id each record carries (header ``x-outbox-id``), in the order read."""
    return [int(dict(r.headers)[OUTBOX_ID_HEADER]) for r in records]


def changes(
    records: list[Any], users: Iterable[uuid.UUID] | None = None
) -> list[ScoreChangedEvent]:
    """Parse ScoreChanged records (of ``users`` only, when given).

    A test's topic can also hold other tests' events: every relay publishes every unsent row of
    the run's shared database, so a test's relay may publish what an earlier test left unsent.
    """
    events = [ScoreChangedEvent.model_validate_json(r.value) for r in records]
    if users is None:
        return events
    wanted = set(users)
    return [e for e in events if e.data.user_id in wanted]


def distinct_changes(
    n: int, users: Iterable[uuid.UUID] | None = None
) -> Callable[[list[Any]], bool]:
    """A ``read_topic`` condition: ``n`` distinct (user, version) events (of ``users``) arrived.

    An event seen twice (possible only for a read_uncommitted reader) counts once.
    """
    wanted = None if users is None else {str(u).encode() for u in users}

    def done(records: list[Any]) -> bool:
        mine = [r for r in records if wanted is None or r.key in wanted]
        return (
            len(
                {(r.key, ScoreChangedEvent.model_validate_json(r.value).data.version) for r in mine}
            )
            >= n
        )

    return done


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30) -> None:
    """Wait until ``check()`` holds (the database has no event to await, so poll it briefly)."""
    async with asyncio.timeout(timeout_s):
        while not await check():  # noqa: ASYNC110 - no event to wait for
            await asyncio.sleep(0.05)


async def applied_count(conn: Conn, users: list[uuid.UUID]) -> int:
    """How many actions of these users are applied."""
    return int(await conn.fetchval("SELECT count(*) FROM actions WHERE user_id = ANY($1)", users))


def assert_versions_consecutive(events: list[ScoreChangedEvent]) -> dict[uuid.UUID, int]:
    """Per user, versions 1..n with no gap and no conflicting duplicate; returns n per user.

    A repeated event (which a read_uncommitted reader may see) must be the same event.
    """
    by_key: dict[tuple[uuid.UUID, int], ScoreChangedEvent] = {}
    for e in events:
        key = (e.data.user_id, e.data.version)
        if key in by_key:
            assert by_key[key] == e, f"conflicting events for {key}: {by_key[key]} vs {e}"
        by_key[key] = e
    top: dict[uuid.UUID, int] = {}
    for user, version in by_key:
        top[user] = max(top.get(user, 0), version)
    for user, n in top.items():
        versions = sorted(v for u, v in by_key if u == user)
        assert versions == list(range(1, n + 1)), f"user {user} has versions {versions}"
        scores = [by_key[(user, v)].data.score for v in versions]
        deltas = [by_key[(user, v)].data.delta for v in versions]
        running = [sum(deltas[: i + 1]) for i in range(len(deltas))]
        assert scores == running, f"user {user}: scores {scores} are not the running sum"
    return top


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[TestClient[Any, Any]]:
    """The real score app in-process (consumer and relay running); stopped like on SIGTERM."""
    client: TestClient[Any, Any] = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def ready(client: TestClient[Any, Any]) -> dict[str, Any]:
    """The /readyz document."""
    async with client.get("/readyz") as resp:
        body: dict[str, Any] = await resp.json()
        body["http_status"] = resp.status
        return body
