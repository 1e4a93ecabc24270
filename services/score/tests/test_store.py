"""The score store against the real PostgreSQL: one transaction per batch, exactly once."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from common.events import ScoreChangedEvent
from score.apply import Plan
from score.commands import Command, Delivery
from score.store import ConcurrentApplyError, ScoreStore
from services.score.tests.support import TRACEPARENT, add_users, command, eventually

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def _no_leftover_outbox(pg: asyncpg.Connection) -> AsyncIterator[None]:
    """Nothing relays these tests' rows: delete them, so no later relay in the run sends them."""
    start = await pg.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    yield
    await pg.execute("DELETE FROM outbox WHERE id > $1 AND sent_at IS NULL", start)


def _cmds(users: list[uuid.UUID], points: list[int]) -> list[Command]:
    headers = (("traceparent", TRACEPARENT.encode()),)
    return [
        Command(Delivery("t", 0, i, None, None, headers), command(u, p))
        for i, (u, p) in enumerate(zip(users, points, strict=True))
    ]


async def _outbox(conn: asyncpg.Connection, users: list[uuid.UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(
        # Keys compared as bytes: rows of other streams are keyed by other things (board ids).
        "SELECT id, event_key, payload, headers FROM outbox"
        " WHERE event_key = ANY($1::bytea[]) ORDER BY id",
        [str(u).encode() for u in users],
    )


async def test_a_batch_changes_scores_versions_actions_and_outbox_together(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    alice, bob = await add_users(pg, 2)
    batch = _cmds([alice, bob, alice, alice], [10, 3, 5, 1])
    plan = await ScoreStore(pool).apply(batch)

    assert len(plan.applied) == 4
    scores = {
        r["user_id"]: (r["score"], r["version"], r["reached_at"])
        for r in await pg.fetch("SELECT * FROM scores WHERE user_id = ANY($1)", [alice, bob])
    }
    assert {u: s[:2] for u, s in scores.items()} == {alice: (16, 3), bob: (3, 1)}
    actions = await pg.fetch(
        "SELECT action_id, version FROM actions WHERE user_id = $1 ORDER BY version", alice
    )
    assert [(r["action_id"], r["version"]) for r in actions] == [
        (c.data.action_id, v)
        for c, v in zip([batch[0], batch[2], batch[3]], [1, 2, 3], strict=True)
    ]

    rows = await _outbox(pg, [alice, bob])
    events = [ScoreChangedEvent.model_validate_json(r["payload"]) for r in rows]
    # One event per applied command, in stream order, keyed by user, trace context carried on.
    assert [(e.data.action_id, e.data.version, e.data.score) for e in events] == [
        (batch[0].data.action_id, 1, 10),
        (batch[1].data.action_id, 1, 3),
        (batch[2].data.action_id, 2, 15),
        (batch[3].data.action_id, 3, 16),
    ]
    assert [r["event_key"] for r in rows] == [str(e.data.user_id).encode() for e in events]
    assert all(json.loads(r["headers"]) == {"traceparent": TRACEPARENT} for r in rows)
    assert events[0].source == "https://scoreboard.dev/services/score"
    assert events[0].data.username == f"p_{alice.hex[:16]}"
    # The event's time is the transaction's time, which is also when the score was reached.
    assert {e.data.occurred_at for e in events} == {scores[alice][2]}


async def test_replaying_a_batch_applies_nothing_twice(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    (alice,) = await add_users(pg, 1)
    batch = _cmds([alice] * 3, [1, 2, 3])
    store = ScoreStore(pool)
    await store.apply(batch)
    again = await store.apply([*batch, *_cmds([alice], [4])])
    assert [d.data.action_id for d in again.duplicates] == [c.data.action_id for c in batch]
    assert [a.version for a in again.applied] == [4]
    assert await pg.fetchval("SELECT score FROM scores WHERE user_id = $1", alice) == 10
    assert len(await _outbox(pg, [alice])) == 4


async def test_an_unknown_user_does_not_poison_the_batch(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    (alice,) = await add_users(pg, 1)
    ghost = uuid.uuid4()
    plan = await ScoreStore(pool).apply(_cmds([ghost, alice], [5, 7]))
    assert [c.data.user_id for c in plan.unknown_users] == [ghost]
    assert await pg.fetchval("SELECT score FROM scores WHERE user_id = $1", alice) == 7
    assert await pg.fetchval("SELECT count(*) FROM scores WHERE user_id = $1", ghost) == 0


async def test_equal_scores_rank_who_reached_first(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    early, late = await add_users(pg, 2)
    store = ScoreStore(pool)
    await store.apply(_cmds([early], [10]))
    await store.apply(_cmds([late], [10]))
    ranked = await pg.fetch(
        "SELECT user_id FROM scores WHERE user_id = ANY($1) ORDER BY score DESC, reached_at",
        [early, late],
    )
    assert [r["user_id"] for r in ranked] == [early, late]


async def test_overlapping_batches_from_two_replicas_apply_each_action_once(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    # During a rebalance the old and the new owner may apply the same records at once.
    users = await add_users(pg, 20)
    batch = _cmds(users * 10, list(range(1, 201)))
    store = ScoreStore(pool)

    async def apply_retrying(commands: list[Command]) -> Plan:
        # What the consumer does: a batch that lost the race rolls back and is tried again.
        while True:
            try:
                return await store.apply(commands)
            except ConcurrentApplyError:
                continue

    plans = await asyncio.gather(apply_retrying(batch), apply_retrying(batch))

    assert sum(len(p.applied) for p in plans) == 200
    assert sum(len(p.duplicates) for p in plans) == 200
    rows = await _outbox(pg, users)
    events = [ScoreChangedEvent.model_validate_json(r["payload"]) for r in rows]
    for user in users:
        mine = [e.data for e in events if e.data.user_id == user]
        assert [e.version for e in mine] == list(range(1, 11))
        assert [e.score for e in mine] == [sum(e.delta for e in mine[: i + 1]) for i in range(10)]


async def test_a_batch_that_lost_a_race_writes_nothing(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    (alice,) = await add_users(pg, 1)
    store = ScoreStore(pool)
    await store.apply(_cmds([alice], [1]))
    # Another replica is in the middle of applying a command for alice and holds her row.
    other = pg.transaction()
    await other.start()
    await pg.execute(
        "UPDATE scores SET score = score + 10, version = version + 1 WHERE user_id = $1", alice
    )
    racing = asyncio.create_task(store.apply(_cmds([alice], [5])))

    async def blocked_on_the_row() -> bool:
        waiting = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(waiting)

    await eventually(blocked_on_the_row, timeout_s=10)
    await other.commit()
    with pytest.raises(ConcurrentApplyError):
        await racing
    # The loser rolled back as a whole: its retry would start from version 2.
    row = await pg.fetchrow("SELECT score, version FROM scores WHERE user_id = $1", alice)
    assert row is not None
    assert (row["score"], row["version"]) == (11, 2)
    assert await pg.fetchval("SELECT count(*) FROM actions WHERE user_id = $1", alice) == 1
    assert len(await _outbox(pg, [alice])) == 1
