"""Redis is a cache: a lost board is rebuilt from PostgreSQL, identically, by one replica."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from broadcaster.components import components_key
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.moderation import ModerationBoard, sync_board
from broadcaster.postgres_scores import PostgresScores
from broadcaster.rebuild import Rebuilder
from broadcaster.redis_board import RedisBoard
from common.health import registry_key
from common.postgres import create_pool
from common.redis_client import RedisClient
from testkit.broadcaster import (
    Send,
    SettingsFactory,
    applied_inbox,
    new_player,
    save_scores,
    seed,
    serve,
)

pytestmark = pytest.mark.redis_cluster

T0 = datetime(2026, 1, 15, tzinfo=UTC)

_PG_ORDER = """
    SELECT s.user_id::text, u.username, s.score
    FROM scores s JOIN users u USING (user_id)
    WHERE s.version > 0 AND NOT u.banned
    ORDER BY s.score DESC, s.reached_at ASC, s.user_id ASC
"""


async def _board_rows(board: RedisBoard) -> list[tuple[str, str, int]]:
    top = await board.top(1_000_000)
    assert top is not None
    return [(e.user_id, e.username, e.score) for e in top.entries]


async def test_flushed_board_is_rebuilt_identical_to_postgres(
    make_settings: SettingsFactory,
    pg: asyncpg.Connection,
    redis_client: RedisClient,
    send: Send,
) -> None:
    # Ties on score, and on score and time (then the user id decides), as PostgreSQL orders them.
    players = [new_player() for _ in range(30)]
    for i, p in enumerate(players):
        p.gain(100 + (i % 5) * 10, T0 + timedelta(seconds=i % 3))
    await seed(pg, players)
    settings = make_settings()
    async with serve(settings) as client:
        board = client.app[components_key].board
        assert await _board_rows(board) == [tuple(r) for r in await pg.fetch(_PG_ORDER)]
        before = (await (await client.get("/api/scoreboard/top")).json())["version"]

        # Lose the board: only this app's board keys, never anything else on the shared server.
        await redis_client.delete(*board.keys.board)
        # Reads keep working (PostgreSQL) and notice the loss...
        resp = await client.get("/api/scoreboard/top", params={"limit": "5"})
        assert [e["user_id"] for e in (await resp.json())["entries"]] == [
            r["user_id"] for r in (await pg.fetch(_PG_ORDER))[:5]
        ]
        # ...and a change arriving meanwhile is applied on top of the rebuilt board (never on an
        # empty one). PostgreSQL gets it afterwards, so the rebuild cannot already contain it.
        mover = players[0]
        change = mover.gain(1000)
        async with applied_inbox(redis_client, board.keys.applied) as inbox:
            await send(change)
            applied = await inbox.wait_for(change.action_id)
        await save_scores(pg, [mover])
        # Ahead: more points, or as many reached earlier (another run of this test's mover).
        ahead = await pg.fetchval(
            """SELECT count(*) FROM scores WHERE version > 0
               AND (score > $1 OR (score = $1 AND (reached_at, user_id) < ($2, $3)))""",
            mover.score,
            mover.reached_at,
            mover.user_id,
        )
        assert (applied["score"], applied["rank"]) == (mover.score, ahead + 1)
        assert await _board_rows(board) == [tuple(r) for r in await pg.fetch(_PG_ORDER)]
        # The version did not go back: it is PostgreSQL's again (the sum of the users'
        # versions, removed users' plus one each: other tests delete users in this database;
        # plus the holds and releases of shadow quarantine, test_holds.py, and one per ban and
        # unban, test_moderation.py).
        version = await board.poll() or 0
        assert version >= before
        assert version == await pg.fetchval(
            """SELECT (SELECT sum(version) FROM scores WHERE version > 0)
                    + (SELECT coalesce(sum(version + 1), 0) FROM removed_users)
                    + (SELECT steps FROM board_hold_steps)
                    + (SELECT count(*) FROM moderation_events WHERE action <> 'deleted')"""
        )
        rebuilds = client.app[registry_key].get_sample_value(
            "scoreboard_broadcaster_board_rebuilds_total"
        )
        assert rebuilds is not None
        assert rebuilds >= 2  # the merge at start (new group) and the rebuild after the loss


async def test_only_one_replica_rebuilds(
    make_settings: SettingsFactory, pg: asyncpg.Connection, redis_client: RedisClient
) -> None:
    players = [new_player() for _ in range(5)]
    for p in players:
        p.gain(7)
    await seed(pg, players)
    settings = make_settings()
    pool = await create_pool(settings)
    try:
        registries = [CollectorRegistry() for _ in range(3)]

        def replica(registry: CollectorRegistry) -> Rebuilder:
            board = RedisBoard(redis_client, settings.redis_prefix)
            # As the app wires it: the bans synced before the board is marked built.
            sync = functools.partial(
                sync_board, ModerationBoard(redis_client, board), pool, rebuild=True
            )
            metrics = BroadcasterMetrics.create(registry)
            return Rebuilder(settings, board, PostgresScores(pool), metrics, before_built=sync)

        replicas = [replica(registry) for registry in registries]
        rebuilt = await asyncio.gather(*(r.ensure_built() for r in replicas))
        assert sorted(rebuilt) == [False, False, True]
        counts = [
            r.get_sample_value("scoreboard_broadcaster_board_rebuilds_total") for r in registries
        ]
        assert sorted(c or 0.0 for c in counts) == [0.0, 0.0, 1.0]
        board = RedisBoard(redis_client, settings.redis_prefix)
        assert await _board_rows(board) == [tuple(r) for r in await pg.fetch(_PG_ORDER)]
        assert not await board.lock_held()
    finally:
        await pool.close()
        await redis_client.delete(*RedisBoard(redis_client, settings.redis_prefix).keys.board)


async def test_a_board_under_the_names_before_hash_tags_is_rebuilt_under_the_new_ones(
    make_settings: SettingsFactory, pg: asyncpg.Connection, redis_client: RedisClient
) -> None:
    """The upgrade to the Redis Cluster layout (docs/operations.md): the version before kept the
    main board as ``P board:*``; the new names have no ``built`` marker, so the first replica
    rebuilds the board from PostgreSQL, at a version no lower than the old one."""
    players = [new_player() for _ in range(3)]
    for i, player in enumerate(players):
        player.gain(20 + i)
    await seed(pg, players)
    settings = make_settings()
    p = settings.redis_prefix
    old = {name: f"{p}board:{name}" for name in ("rank", "users", "version", "built")}
    old_version = await pg.fetchval("SELECT sum(version) FROM scores WHERE version > 0")
    for key, value in ((old["built"], "{}"), (old["version"], str(old_version))):
        await redis_client.set(key, value)
    await redis_client.zadd(old["rank"], {"ghost": 10**9})
    pool = await create_pool(settings)
    try:
        board = RedisBoard(redis_client, p)
        sync = functools.partial(
            sync_board, ModerationBoard(redis_client, board), pool, rebuild=True
        )
        metrics = BroadcasterMetrics.create(CollectorRegistry())
        rebuilder = Rebuilder(settings, board, PostgresScores(pool), metrics, before_built=sync)
        assert not await board.is_built()
        assert await rebuilder.ensure_built()  # rebuilt, not taken as built
        assert await _board_rows(board) == [tuple(r) for r in await pg.fetch(_PG_ORDER)]
        assert (await board.poll() or 0) >= old_version
    finally:
        await pool.close()
        await redis_client.delete(*RedisBoard(redis_client, p).keys.board)
        for key in old.values():
            await redis_client.delete(key)  # one key at a time: their slots differ
