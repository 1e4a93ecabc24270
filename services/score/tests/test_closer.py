"""Closing periods on the real PostgreSQL and Kafka: a period closes after its end and the grace
(an injected clock), exactly one PeriodClosed reaches the topic (read_committed) with the final
standings, and neither a second closer nor a second run publishes anything more."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry

from common.boards import BoardDefinition, save_definitions
from common.events import STRUCTURED_CONTENT_TYPE, PeriodClosedEvent, Topics
from common.kafka import make_consumer, started
from score.closer import CloserMetrics, PeriodCloser
from score.command_progress import CommandProgress
from score.commands import Command, Delivery
from score.metrics import ScoreMetrics
from score.relay import OutboxRelay
from score.settings import Settings
from score.store import ScoreStore
from services.score.tests.support import add_users, command, read_to_end
from testkit.env import TestEnv

pytestmark = pytest.mark.integration

# A type no other test uses, so the test board counts only this file's commands.
POINTS = 953
DAY = datetime(2026, 1, 1, tzinfo=UTC)
END = DAY + timedelta(days=1)
GRACE = timedelta(seconds=30)


@pytest.fixture(autouse=True)
async def _no_leftover_outbox(pg: asyncpg.Connection) -> AsyncIterator[None]:
    start = await pg.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    yield
    await pg.execute("DELETE FROM outbox WHERE id > $1 AND sent_at IS NULL", start)


@pytest.fixture
async def board_id(pg: asyncpg.Connection) -> AsyncIterator[str]:
    """A daily UTC board (top 3) fed by this file's action type, created before ``DAY``."""
    board = f"c-{uuid.uuid4().hex[:12]}"
    definition = BoardDefinition(
        board_id=board,
        title="Closing",
        action_types=(f"worth_{POINTS}",),
        windows=("all-time", "daily", "weekly"),
        closed_top_n=3,
    )
    await save_definitions(pg, [definition])
    # As if it had been defined then: the closer closes the periods that ended since.
    await pg.execute("UPDATE boards SET created_at = $2 WHERE board_id = $1", board, DAY)
    yield board
    await pg.execute("UPDATE boards SET retired = true WHERE board_id = $1", board)


def _at(user: uuid.UUID, accepted_at: datetime) -> Command:
    data = command(user, POINTS).model_copy(
        update={"accepted_at": accepted_at, "issued_at": accepted_at - timedelta(seconds=5)}
    )
    return Command(Delivery("t", 0, 0, None, None, ()), data)


class _Together(CommandProgress):
    """The real progress check, then a barrier: two closers both decide to close before either
    writes, as two replicas may (so only the unique key keeps the second from closing too)."""

    def __init__(self, settings: Settings, barrier: asyncio.Barrier) -> None:
        super().__init__(settings)
        self._barrier = barrier

    async def applied_before(self, instant: datetime) -> bool:
        caught_up = await super().applied_before(instant)
        await self._barrier.wait()
        return caught_up


def _closer(
    pool: asyncpg.Pool, settings: Settings, now: datetime, progress: CommandProgress | None = None
) -> PeriodCloser:
    return PeriodCloser(
        pool,
        settings,
        CloserMetrics.create(CollectorRegistry()),
        progress or CommandProgress(settings),
        clock=lambda: now,
    )


def _ours(records: list[Any], board: str) -> list[Any]:
    return [r for r in records if r.key == board.encode()]


@contextlib.asynccontextmanager
async def _relay(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(
        OutboxRelay(settings, ScoreMetrics.create(CollectorRegistry())).run(stop)
    )
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 20)


async def _published(settings: Settings, board: str, done: Callable[[int], bool]) -> list[Any]:
    """This board's records on the period-closed topic (read_committed), once ``done(count)``."""
    topic = Topics(settings.topic_prefix).period_closed
    async with asyncio.timeout(30):
        while True:
            records = _ours(await read_to_end(settings, topic), board)
            if done(len(records)):
                return records
            await asyncio.sleep(0.2)


async def test_a_period_closes_once_with_its_final_standings(
    pool: asyncpg.Pool, pg: asyncpg.Connection, board_id: str, settings: Settings
) -> None:
    alice, bob, carol, dave, mallory = await add_users(pg, 5)
    store = ScoreStore(pool)
    # Alice 3 entries, Bob 2, Carol and Dave 1 each (Carol first), Mallory 4 but banned; one
    # accepted 0.1 s before midnight and applied now, one just after midnight (the next day).
    await store.apply([_at(alice, DAY + timedelta(hours=h)) for h in (1, 2, 3)])
    await store.apply([_at(bob, DAY + timedelta(hours=4)), _at(carol, DAY + timedelta(hours=5))])
    await store.apply([_at(dave, DAY + timedelta(hours=6))])
    await store.apply([_at(bob, END - timedelta(milliseconds=100))])
    await store.apply([_at(alice, END + timedelta(milliseconds=100))])
    await store.apply([_at(mallory, DAY + timedelta(hours=h)) for h in (1, 2, 3, 4)])
    await pg.execute("UPDATE users SET banned = true WHERE user_id = $1", mallory)

    # Before the grace has passed nothing closes.
    assert await _closer(pool, settings, END + GRACE - timedelta(seconds=1)).close_due() == []

    # Two closers (two replicas) at once: exactly one closes the day; the week is not over.
    now = END + GRACE + timedelta(seconds=1)
    barrier = asyncio.Barrier(2)
    first, second = await asyncio.gather(
        _closer(pool, settings, now, _Together(settings, barrier)).close_due(),
        _closer(pool, settings, now, _Together(settings, barrier)).close_due(),
    )
    ours = [c for c in [*first, *second] if c.board == board_id]
    assert [(c.window, c.period) for c in ours] == [("daily", "2026-01-01")]
    closed = ours[0]
    assert [(s.rank, s.user_id, s.score, s.entries) for s in closed.standings] == [
        (1, alice, 3 * POINTS, 3),
        (2, bob, 2 * POINTS, 2),
        (3, carol, POINTS, 1),  # reached the score before Dave
    ]
    assert (closed.players, closed.entries, closed.top_n) == (4, 7, 3)
    assert (closed.starts_at, closed.ends_at) == (DAY, END)

    async with _relay(settings):
        (record,) = await _published(settings, board_id, lambda n: n >= 1)
        event = PeriodClosedEvent.model_validate_json(record.value)
        assert event.id == f"{board_id}:daily:2026-01-01"
        assert event.subject == f"{board_id}/daily/2026-01-01"
        assert event.source == "https://scoreboard.dev/services/score"
        assert event.data == closed
        assert ("content-type", STRUCTURED_CONTENT_TYPE.encode()) in record.headers
        assert json.loads(record.value)["dataschema"].endswith(
            "period-closed.v1.json#/$defs/PeriodClosed"
        )

        # A second run later, with a late command for the closed day applied meanwhile:
        # nothing more is published; the late entry counts in the day's totals and is reported.
        await store.apply([_at(dave, END - timedelta(milliseconds=50))])
        closer = _closer(pool, settings, now + timedelta(minutes=5))
        assert [c for c in await closer.close_due() if c.board == board_id] == []
        late = await pg.fetchval(
            "SELECT late_entries FROM closed_periods WHERE board_id = $1 AND period = $2",
            board_id,
            "2026-01-01",
        )
        assert late == 1
        await asyncio.sleep(1.0)  # the relay's rounds (200 ms apart) would publish a new row
        backlog = await pg.fetchval(
            "SELECT count(*) FROM outbox WHERE stream = 'period-closed' AND sent_at IS NULL"
        )
        assert backlog == 0
    assert len(await _published(settings, board_id, lambda n: True)) == 1


async def test_a_period_waits_for_commands_sent_before_its_grace_ended(
    pool: asyncpg.Pool, board_id: str, settings: Settings, test_env: TestEnv
) -> None:
    commands = Topics(settings.topic_prefix).commands
    # A command sent 0.1 s before midnight that the score service has not applied yet (its
    # group has not committed past it): the content does not matter, its timestamp does.
    producer = AIOKafkaProducer(
        **test_env.kafka_auth().aiokafka(), bootstrap_servers=settings.kafka_bootstrap
    )
    async with started(producer):
        sent = await producer.send_and_wait(
            commands, b"{}", key=b"k", timestamp_ms=int((END.timestamp() - 0.1) * 1000)
        )
    now = END + GRACE + timedelta(seconds=1)
    assert [c for c in await _closer(pool, settings, now).close_due() if c.board == board_id] == []

    # The score group commits past it (its batch is applied): the day closes.
    group = make_consumer(settings, group_id=settings.group_id, client_id="closer-test")
    tp = TopicPartition(commands, sent.partition)
    async with started(group):
        group.assign([tp])
        await group.commit({tp: sent.offset + 1})
    closed = [c for c in await _closer(pool, settings, now).close_due() if c.board == board_id]
    assert [(c.window, c.period, c.standings) for c in closed] == [("daily", "2026-01-01", ())]
