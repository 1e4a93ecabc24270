"""A deleted user leaves the live board at once, stays off it, and the version never goes back."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from broadcaster.components import components_key
from broadcaster.postgres_scores import PostgresScores
from common.health import registry_key
from common.postgres import create_pool
from common.redis_client import RedisClient
from common.removals import record_removal
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

pytestmark = pytest.mark.redis_cluster


async def _delete(pg: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """What auth's delete-user does to PostgreSQL (common.removals, then the DELETE)."""
    async with pg.transaction():
        version = await record_removal(pg, user_id)
        await pg.execute("DELETE FROM users WHERE user_id = $1", user_id)
    return version


def _ids(frame: dict[str, object]) -> list[str]:
    entries = frame["entries"]
    assert isinstance(entries, list)
    return [e["user_id"] for e in entries]


async def test_a_deleted_player_leaves_every_board_and_stays_off(
    make_settings: SettingsFactory,
    pg: asyncpg.Connection,
    redis_client: RedisClient,
    send: Send,
) -> None:
    base = await high_score(pg)
    players: list[Player] = [new_player() for _ in range(5)]
    for i, p in enumerate(players):
        p.gain(base + 10 * i)
    await seed(pg, players)
    victim = players[-1]  # the leader
    settings = make_settings()
    async with serve(settings) as client:
        board = client.app[components_key].board
        async with client.ws_connect("/ws/scoreboard") as ws:
            first = await next_frame(ws, "top", wait_s=2.0)
            assert _ids(first)[0] == str(victim.user_id)

            registry = client.app[registry_key]
            removed_before = registry.get_sample_value(
                "scoreboard_broadcaster_board_users_removed_total"
            )
            assert await _delete(pg, victim.user_id) == victim.version
            gone = await frame_where(
                ws, lambda f: f["type"] == "top" and str(victim.user_id) not in _ids(f)
            )
            assert gone["version"] > first["version"]
            removed = registry.get_sample_value("scoreboard_broadcaster_board_users_removed_total")
            assert removed is not None
            assert removed_before is not None
            assert removed - removed_before == 1
            assert _ids(gone)[0] == str(players[-2].user_id)

        # An event of the victim's still in Kafka does not bring them back; a later change of
        # someone else is applied as usual.
        await _late_event_changes_nothing(client, victim, send)
        resp = await client.get(f"/api/scoreboard/users/{victim.user_id}")
        assert resp.status == 404
        live_version = await board.poll()
        assert live_version is not None

        # Redis loses the board: the rebuild leaves the victim off, and lands on PostgreSQL's
        # version, which counts the removal: never below what clients have seen.
        await redis_client.delete(*board.keys.board)
        await client.app[components_key].rebuilder.ensure_built()
        pool = await create_pool(settings)
        try:
            truth = await PostgresScores(pool).top(10)
        finally:
            await pool.close()
        rebuilt = await board.top(10)
        assert rebuilt is not None
        assert str(victim.user_id) not in [e.user_id for e in rebuilt.entries]
        assert rebuilt.entries == truth.entries
        assert rebuilt.version == truth.version
        assert rebuilt.version >= live_version
        # The tombstone is rebuilt too: a late event replayed changes nothing.
        await _late_event_changes_nothing(client, victim, send)


async def _late_event_changes_nothing(client: Client, victim: Player, send: Send) -> None:
    """Send an event of the removed ``victim``: it is read, counted as stale, and the victim
    stays off the board."""
    registry = client.app[registry_key]

    def stale() -> float:
        return registry.get_sample_value("scoreboard_broadcaster_board_events_stale_total") or 0.0

    before = stale()
    await send(victim.gain(1000))
    await eventually(lambda: stale() > before)
    found = await client.app[components_key].board.standings([str(victim.user_id)])
    assert found is not None
    assert str(victim.user_id) not in found[1]


async def test_removal_is_recorded_with_the_locked_version_once(pg: asyncpg.Connection) -> None:
    player = new_player()
    player.gain(7)
    player.gain(3)
    await seed(pg, [player])
    async with pg.transaction():
        assert await record_removal(pg, player.user_id) == 2
        assert await record_removal(pg, player.user_id) == 2  # twice: recorded once
        await pg.execute("DELETE FROM users WHERE user_id = $1", player.user_id)
    rows = await pg.fetch("SELECT version FROM removed_users WHERE user_id = $1", player.user_id)
    assert [r["version"] for r in rows] == [2]
