"""Bans on the live boards (real Redis, PostgreSQL and Kafka): a banned player leaves the main
board and every board period at once, stays off through late events and rebuilds, and an unban
puts their entries back; the board version only grows and a rebuild lands on PostgreSQL's."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest

from broadcaster.components import components_key
from broadcaster.postgres_scores import PostgresScores
from common import moderation
from common.boards import BoardDefinition, save_definitions
from common.health import registry_key
from common.postgres import create_pool
from common.redis_client import RedisClient
from testkit.broadcaster import (
    Client,
    Player,
    Send,
    SettingsFactory,
    eventually,
    frame_where,
    high_score,
    new_player,
    next_frame,
    seed,
    serve,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis_cluster]


@pytest.fixture
async def board_id(pg: asyncpg.Connection) -> AsyncIterator[str]:
    """A UTC board with a daily window; retired afterwards."""
    board = f"m-{uuid.uuid4().hex[:12]}"
    await save_definitions(
        pg, [BoardDefinition(board_id=board, title="Moderated", windows=("daily",))]
    )
    yield board
    await pg.execute("UPDATE boards SET retired = true WHERE board_id = $1", board)


async def _moderate(pg: asyncpg.Connection, user_id: uuid.UUID, *, banned: bool) -> int:
    """What auth's ban and unban do to PostgreSQL (the flag, then the moderation log)."""
    async with pg.transaction():
        await pg.execute("UPDATE users SET banned = $2 WHERE user_id = $1", user_id, banned)
        return await moderation.record(pg, user_id, "banned" if banned else "unbanned")


def _ids(frame: dict[str, object]) -> list[str]:
    entries = frame["entries"]
    assert isinstance(entries, list)
    return [e["user_id"] for e in entries]


async def _period_ids(client: Client, board: str) -> list[str]:
    resp = await client.get(f"/api/boards/{board}/daily/top", params={"limit": "10"})
    assert resp.status == 200
    return [e["user_id"] for e in (await resp.json())["entries"]]


async def _period_led_by(client: Client, board: str, leader: str) -> None:
    """Wait until the period's first entry is ``leader`` (its Redis copy is dropped and
    rebuilt from PostgreSQL right after the main board changed)."""
    async with asyncio.timeout(10):
        while (await _period_ids(client, board))[0] != leader:  # noqa: ASYNC110 (no event says)
            await asyncio.sleep(0.05)


async def _truth(client: Client) -> tuple[int, list[str]]:
    pool = await create_pool(client.app[components_key].settings)
    try:
        top = await PostgresScores(pool).top(10)
    finally:
        await pool.close()
    return top.version, [e.user_id for e in top.entries]


async def test_a_ban_takes_a_player_off_every_board_and_an_unban_brings_them_back(
    make_settings: SettingsFactory,
    pg: asyncpg.Connection,
    redis_client: RedisClient,
    send: Send,
    board_id: str,
) -> None:
    base = await high_score(pg)
    players: list[Player] = [new_player("m") for _ in range(5)]
    for i, p in enumerate(players):
        p.gain(base + 10 * i)
    await seed(pg, players)
    today = datetime.now(UTC).date().isoformat()
    await pg.executemany(
        "INSERT INTO board_scores VALUES ($1, 'daily', $2, $3, $4, 1, $5, $6)",
        [(board_id, today, p.user_id, p.score, p.version, p.reached_at) for p in players],
    )
    victim = players[-1]  # the leader everywhere
    uid = str(victim.user_id)
    async with serve(make_settings()) as client:
        parts = client.app[components_key]
        assert (await _period_ids(client, board_id))[0] == uid  # the period is in Redis now
        async with client.ws_connect("/ws/scoreboard") as ws:
            first = await next_frame(ws, "top", wait_s=2.0)
            assert _ids(first)[0] == uid

            await _moderate(pg, victim.user_id, banned=True)
            gone = await frame_where(ws, lambda f: f["type"] == "top" and uid not in _ids(f))
            assert gone["version"] > first["version"]
            assert _ids(gone)[0] == str(players[-2].user_id)
        await _period_led_by(client, board_id, str(players[-2].user_id))
        assert uid not in await _period_ids(client, board_id)
        for path in (f"/api/scoreboard/users/{uid}", f"/api/boards/{board_id}/daily/users/{uid}"):
            assert (await client.get(path)).status == 404, path

        # A late event of theirs (in Kafka before the ban) does not bring them back.
        registry = client.app[registry_key]
        stale = "scoreboard_broadcaster_board_events_stale_total"
        before = registry.get_sample_value(stale) or 0.0
        await send(victim.gain(1000))
        await eventually(lambda: (registry.get_sample_value(stale) or 0.0) > before)
        top = await parts.board.top(10)
        assert top is not None
        assert uid not in [e.user_id for e in top.entries]

        # Redis loses the board: the rebuild leaves them off and lands on PostgreSQL's version.
        live = await parts.board.poll()
        assert live is not None
        await redis_client.delete(*parts.board.keys.board)
        await parts.rebuilder.ensure_built()
        rebuilt = await parts.board.top(10)
        assert rebuilt is not None
        version, ids = await _truth(client)
        assert [e.user_id for e in rebuilt.entries] == ids
        assert uid not in ids
        assert rebuilt.version == version
        assert rebuilt.version >= live

        # The unban: back on the main board (at their score in PostgreSQL) and on the period.
        async with client.ws_connect("/ws/scoreboard") as ws:
            before_unban = await next_frame(ws, "top", wait_s=2.0)
            await _moderate(pg, victim.user_id, banned=False)
            back = await frame_where(ws, lambda f: f["type"] == "top" and uid in _ids(f))
            assert back["version"] > before_unban["version"]
            assert _ids(back)[0] == uid
        await _period_led_by(client, board_id, uid)
        assert (await client.get(f"/api/scoreboard/users/{uid}")).status == 200
        version, ids = await _truth(client)
        assert ids[0] == uid
        assert await parts.board.poll() == version  # Redis and PostgreSQL count alike


async def test_replicas_apply_each_entry_once(
    make_settings: SettingsFactory, pg: asyncpg.Connection
) -> None:
    """Two replicas on one board both see every entry; the board moves once per entry, so its
    version stays PostgreSQL's."""
    base = await high_score(pg)
    players = [new_player("r") for _ in range(3)]
    for i, p in enumerate(players):
        p.gain(base + 10 * i)
    await seed(pg, players)
    victim = players[-1]
    first = make_settings()
    second = make_settings(redis_prefix=first.redis_prefix)  # the same board, another replica
    async with serve(first) as a, serve(second) as b:
        replicas = [a.app[components_key], b.app[components_key]]
        for banned in (True, False, True):
            await _moderate(pg, victim.user_id, banned=banned)
            for parts in replicas:  # each looks (again), whatever the other did
                await parts.moderation.apply_new()
            version, ids = await _truth(a)
            top = await replicas[0].board.top(10)
            assert top is not None
            assert [e.user_id for e in top.entries] == ids
            assert (str(victim.user_id) in ids) is not banned
            assert top.version == version
        await _moderate(pg, victim.user_id, banned=False)  # leave no banned player behind
