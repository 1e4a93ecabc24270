"""The outbox relay on real PostgreSQL and Kafka: every outbox row reaches the topic exactly once
(as a read_committed consumer sees it), in order, whoever crashes or is fenced when.

The database is shared by the whole run, so a relay also publishes other tests' unsent rows;
each test checks the rows of its own users (or keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry

from common.events import ScoreChangedEvent, Topics
from score.commands import Command, Delivery
from score.metrics import ScoreMetrics
from score.outbox import RELAY_LOCK_ID, Outbox
from score.relay import OutboxRelay, Stage, relay_transactional_id
from score.settings import Settings
from score.store import ScoreStore
from services.score.tests.conftest import score_settings
from services.score.tests.support import (
    add_users,
    command,
    eventually,
    outbox_ids,
    read_to_end,
)
from testkit.env import TestEnv

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def small_rounds(test_env: TestEnv, topic_prefix: str) -> Settings:
    """Rounds of ten rows, so a test's rows take several rounds."""
    return score_settings(test_env, topic_prefix, relay_batch=10)


@dataclass(frozen=True)
class Probe:
    """A relay's metrics, and a way to read its counters."""

    registry: CollectorRegistry
    metrics: ScoreMetrics

    def count(self, name: str, **labels: str) -> float:
        """The value of ``scoreboard_score_<name>_total``."""
        value = self.registry.get_sample_value(f"scoreboard_score_{name}_total", labels)
        return value or 0.0


def _probe() -> Probe:
    registry = CollectorRegistry()
    return Probe(registry, ScoreMetrics.create(registry))


@contextlib.asynccontextmanager
async def relaying(relay: OutboxRelay) -> AsyncIterator[asyncio.Task[None]]:
    """Run a relay until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def apply(pool: asyncpg.Pool, users: list[uuid.UUID], n: int) -> None:
    """Apply ``n`` commands round-robin over ``users`` (rows land in the outbox)."""
    cmds = [
        Command(Delivery("t", 0, i, None, None), command(users[i % len(users)], i + 1))
        for i in range(n)
    ]
    await ScoreStore(pool).apply(cmds)


def _keys(users: Iterable[uuid.UUID]) -> list[bytes]:
    return [str(u).encode() for u in users]


async def _unsent(conn: asyncpg.Connection, keys: list[bytes]) -> int:
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE sent_at IS NULL AND event_key = ANY($1)", keys
        )
    )


async def _all_sent(conn: asyncpg.Connection, keys: list[bytes]) -> None:
    async def done() -> bool:
        return await _unsent(conn, keys) == 0

    await eventually(done)


async def assert_exactly_once(
    settings: Settings, conn: asyncpg.Connection, keys: list[bytes], *, versions: bool = True
) -> list[Any]:
    """Every outbox row of ``keys`` is marked sent and on the topic once, per key in id order
    (and, for ScoreChanged payloads, with versions 1, 2, 3, ...). Returns those records."""
    rows = await conn.fetch(
        "SELECT id, event_key, sent_at FROM outbox WHERE event_key = ANY($1) ORDER BY id", keys
    )
    assert rows, "the test wrote no rows"
    assert all(r["sent_at"] is not None for r in rows)
    wanted = set(keys)
    records = [
        r
        for r in await read_to_end(settings, Topics(settings.topic_prefix).changed)
        if r.key in wanted
    ]
    seen = Counter(outbox_ids(records))
    doubled = {i: n for i, n in seen.items() if n > 1}
    assert not doubled, f"published more than once: {doubled}"
    assert set(seen) == {r["id"] for r in rows}, "rows missing from the topic"
    by_key: dict[bytes, list[int]] = {}
    for r, i in zip(records, outbox_ids(records), strict=True):
        by_key.setdefault(r.key, []).append(i)
    if versions:
        for key in wanted:
            events = [
                ScoreChangedEvent.model_validate_json(r.value) for r in records if r.key == key
            ]
            assert [e.data.version for e in events] == list(range(1, len(events) + 1)), key
    else:
        assert all(ids == sorted(ids) for ids in by_key.values())
    return records


async def _relay_backend(conn: asyncpg.Connection) -> int:
    """The PostgreSQL backend (of this run's database) that holds the relay lock."""

    async with asyncio.timeout(30):
        while True:
            pid: int | None = await conn.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid = $1 AND objid = $2",
                RELAY_LOCK_ID >> 32,
                RELAY_LOCK_ID & 0xFFFFFFFF,
            )
            if pid is not None:
                return pid
            await asyncio.sleep(0.05)


async def _aborted_records(settings: Settings) -> int:
    """How many records of the test's topic only a read_uncommitted consumer sees."""
    topic = Topics(settings.topic_prefix).changed
    everything = await read_to_end(settings, topic, isolation_level="read_uncommitted")
    return len(everything) - len(await read_to_end(settings, topic))


async def _terminate(conn: asyncpg.Connection, pid: int) -> None:
    """What an immediate stop of PostgreSQL does to the relay's session: it ends (and the
    lock with it). Waits until the backend is gone."""
    assert await conn.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)


async def test_the_transactional_id_is_one_per_deployment(
    settings: Settings, test_env: TestEnv
) -> None:
    other = score_settings(test_env, "elsewhere.")
    assert relay_transactional_id(settings) == relay_transactional_id(settings.model_copy())
    assert relay_transactional_id(settings) != relay_transactional_id(other)
    assert relay_transactional_id(Settings.load(topic_prefix="")) == (
        "scoreboard.score-changed.v1.relay"
    )


async def test_a_new_leader_marks_what_the_last_one_committed_and_resends_nothing(
    settings: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    users = await add_users(pg, 3)
    keys = _keys(users)
    await apply(pool, users, 30)
    async with relaying(OutboxRelay(settings, _probe().metrics)):
        await _all_sent(pg, keys)
    # As after a crash between commit and marking: the last ten rows count as unsent again.
    await pg.execute(
        "UPDATE outbox SET sent_at = NULL WHERE id IN (SELECT id FROM outbox"
        " WHERE event_key = ANY($1) ORDER BY id DESC LIMIT 10)",
        keys,
    )
    probe = _probe()
    async with relaying(OutboxRelay(settings, probe.metrics)):
        await _all_sent(pg, keys)
    assert probe.count("relay_recovered") == 10
    records = await assert_exactly_once(settings, pg, keys)
    assert len(records) == 30
    # Each record names its row, and the transactional id fences exactly this deployment's relay.
    assert all(dict(r.headers)["x-outbox-id"].isdigit() for r in records)


async def test_a_relay_killed_between_commit_and_marking_is_taken_over_exactly_once(
    small_rounds: Settings,
    test_env: TestEnv,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
) -> None:
    users = await add_users(pg, 4)
    keys = _keys(users)
    await apply(pool, users, 60)
    env = {
        **test_env.environ(),
        "SCOREBOARD_TOPIC_PREFIX": small_rounds.topic_prefix,
        "SCOREBOARD_RELAY_BATCH": "10",
    }
    # Rounds 1 and 2 are marked; round 3 is committed to Kafka, then the process SIGKILLs itself.
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "services.score.tests.relay_process"],
        *["--die-at", "committed", "--round", "3"],
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == -signal.SIGKILL, output.decode(errors="replace")[-3000:]
    on_topic = set(
        outbox_ids(await read_to_end(small_rounds, Topics(small_rounds.topic_prefix).changed))
    )
    unsent = {r[0] for r in await pg.fetch("SELECT id FROM outbox WHERE sent_at IS NULL")}
    committed_unmarked = on_topic & unsent
    assert 0 < len(committed_unmarked) <= 10  # the crash hit the window, one round's worth

    probe = _probe()
    async with relaying(OutboxRelay(small_rounds, probe.metrics)):
        await _all_sent(pg, keys)
    assert probe.count("relay_recovered") == len(committed_unmarked)
    await assert_exactly_once(small_rounds, pg, keys)


@pytest.mark.parametrize("stage", ["sent", "committed"])
async def test_the_relays_postgres_session_killed_mid_round_still_publishes_once(
    stage: Stage,
    small_rounds: Settings,
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    test_env: TestEnv,
) -> None:
    users = await add_users(pg, 3)
    keys = _keys(users)
    await apply(pool, users, 40)
    killed = asyncio.Event()
    admin = await asyncpg.connect(test_env.postgres_dsn)

    async def kill_session(at: Stage) -> None:
        if at == stage and not killed.is_set():
            killed.set()
            await _terminate(admin, await _relay_backend(admin))

    probe = _probe()
    try:
        async with relaying(OutboxRelay(small_rounds, probe.metrics, checkpoint=kill_session)):
            await _all_sent(pg, keys)
    finally:
        await admin.close()
    assert killed.is_set()
    assert probe.count("failures", stage="relay") >= 1  # the round's marking failed
    # Kafka committed the round either way (at "sent" it did not know PostgreSQL was gone);
    # the same relay's next term found it there.
    assert probe.count("relay_recovered") >= 1
    await assert_exactly_once(small_rounds, pg, keys)


async def test_a_fenced_zombie_relay_commits_nothing(
    small_rounds: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    users = await add_users(pg, 3)
    keys = _keys(users)
    await apply(pool, users, 30)
    paused, resume = asyncio.Event(), asyncio.Event()

    async def pause_once(at: Stage) -> None:
        if at == "sent" and not paused.is_set():
            paused.set()  # a round sent, not committed: the transaction is open
            await resume.wait()

    zombie_probe, leader_probe = _probe(), _probe()
    zombie = OutboxRelay(small_rounds, zombie_probe.metrics, checkpoint=pause_once)
    leader = OutboxRelay(small_rounds, leader_probe.metrics)
    assert zombie.transactional_id == leader.transactional_id
    async with relaying(zombie):
        await asyncio.wait_for(paused.wait(), 30)
        # The zombie's session ends (its lock with it) while it still believes it leads.
        await _terminate(pg, await _relay_backend(pg))
        async with relaying(leader):
            await _all_sent(pg, keys)  # the new leader's start fenced the zombie
            resume.set()

            async def fenced() -> bool:
                return zombie_probe.count("relay_fenced") == 1

            await eventually(fenced)
            assert leader.leading
            assert not zombie.leading
    assert leader_probe.count("relay_fenced") == 0
    await assert_exactly_once(small_rounds, pg, keys)
    # The zombie's records are in the log, aborted: only a read_uncommitted consumer sees them.
    assert await _aborted_records(small_rounds) > 0


async def test_a_kafka_failure_before_the_commit_aborts_and_the_round_is_retried(
    small_rounds: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    users = await add_users(pg, 3)
    keys = _keys(users)
    await apply(pool, users, 30)
    failed = asyncio.Event()

    async def fail_once(at: Stage) -> None:
        if at == "sent" and not failed.is_set():
            failed.set()
            raise KafkaError("injected after the round's records were acknowledged")

    probe = _probe()
    async with relaying(OutboxRelay(small_rounds, probe.metrics, checkpoint=fail_once)):
        await _all_sent(pg, keys)
    assert failed.is_set()
    assert probe.count("failures", stage="relay") == 1
    assert probe.count("relay_recovered") == 0  # the aborted round was not committed
    await assert_exactly_once(small_rounds, pg, keys)
    assert await _aborted_records(small_rounds) > 0


async def test_recovery_goes_by_id_not_by_the_highest_id_seen(
    settings: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection, test_env: TestEnv
) -> None:
    # A row whose transaction commits late has a lower id than rows already published.
    late_key = str(uuid.uuid4()).encode()  # no such user: only this row has the key
    slow = await asyncpg.connect(test_env.postgres_dsn)
    try:
        late = slow.transaction()
        await late.start()
        late_id = await slow.fetchval(
            "INSERT INTO outbox (event_key, payload) VALUES ($1, '{}') RETURNING id", late_key
        )
        users = await add_users(pg, 2)
        await apply(pool, users, 20)
        crashed = asyncio.Event()

        async def crash_once(at: Stage) -> None:
            if at == "committed" and not crashed.is_set():
                crashed.set()
                await late.commit()  # visible now, unsent, below the ids just committed to Kafka
                raise RuntimeError("crash between the Kafka commit and marking sent")

        probe = _probe()
        keys = [*_keys(users), late_key]
        async with relaying(OutboxRelay(settings, probe.metrics, checkpoint=crash_once)):
            await _all_sent(pg, keys)
    finally:
        await slow.close()
    assert crashed.is_set()
    assert probe.count("relay_recovered") >= 20
    records = await assert_exactly_once(settings, pg, keys, versions=False)
    assert late_id in outbox_ids(records)


async def test_one_relay_publishes_at_a_time_and_a_standby_takes_over(
    settings: Settings, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    users = await add_users(pg, 2)
    keys = _keys(users)
    first = OutboxRelay(settings, _probe().metrics)
    second = OutboxRelay(settings, _probe().metrics)

    async def exactly_one_leads() -> bool:
        assert not (first.leading and second.leading)
        return first.leading or second.leading

    async def all_sent() -> bool:
        assert not (first.leading and second.leading)
        return await _unsent(pg, keys) == 0

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
        await asyncio.wait_for(asyncio.gather(*tasks.values()), 15)
    await assert_exactly_once(settings, pg, keys)


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
