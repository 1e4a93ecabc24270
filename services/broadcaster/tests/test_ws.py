"""WebSocket /ws/scoreboard: snapshot on connect, players' own frames, limits, graceful drain."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import WSMsgType

from broadcaster.components import components_key
from broadcaster.frames import CLOSE_POLICY, CLOSE_RESTART, CLOSE_TRY_LATER
from testkit.broadcaster import (
    Client,
    Player,
    Send,
    SettingsFactory,
    applied_inbox,
    high_score,
    new_player,
    next_frame,
    save_scores,
    seed,
    serve,
)


@pytest.fixture
async def leaders(pg: asyncpg.Connection) -> list[Player]:
    """Two players ahead of everyone in the database."""
    base = await high_score(pg)
    first, second = new_player("lead"), new_player("next")
    first.gain(base + 20)
    second.gain(base + 10)
    await seed(pg, [first, second])
    return [first, second]


@pytest.fixture
async def client(make_settings: SettingsFactory, leaders: list[Player]) -> AsyncIterator[Client]:
    """A broadcaster whose board (built at start) has the leaders on top."""
    async with serve(make_settings(max_connections=3)) as client:
        yield client


async def test_snapshot_on_connect_and_a_fresh_one_on_reconnect(
    client: Client,
    leaders: list[Player],
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    send: Send,
) -> None:
    async with client.ws_connect("/ws/scoreboard") as ws:
        first = await next_frame(ws, "top", wait_s=1.0)
    assert [e["user_id"] for e in first["entries"][:2]] == [str(p.user_id) for p in leaders]
    assert first["entries"][0]["rank"] == 1
    assert len(first["entries"]) <= 10

    # While nobody watches, the second player overtakes.
    second = leaders[1]
    change = second.gain(100)
    await save_scores(pg, [second])
    async with applied_inbox(redis_client, client.app[components_key].board.keys.applied) as inbox:
        await send(change)
        await inbox.wait_for(change.action_id)

    async with client.ws_connect("/ws/scoreboard") as ws:
        again = await next_frame(ws, "top", wait_s=1.0)
    assert again["version"] > first["version"]
    assert again["entries"][0] == {
        "rank": 1,
        "user_id": str(second.user_id),
        "username": second.username,
        "score": second.score,
    }


async def test_player_gets_own_score_and_rank(
    client: Client, leaders: list[Player], pg: asyncpg.Connection, send: Send
) -> None:
    me, rival = leaders[1], leaders[0]
    headers = {"X-Scoreboard-User-Id": str(me.user_id)}
    async with client.ws_connect("/ws/scoreboard", headers=headers) as ws:
        assert (await next_frame(ws, "top", wait_s=1.0))["type"] == "top"
        mine = await next_frame(ws, "me", wait_s=1.0)
        assert (mine["score"], mine["rank"]) == (me.score, 2)

        await send(me.gain(50))  # overtakes: score and rank change
        mine = await next_frame(ws, "me")
        assert (mine["score"], mine["rank"]) == (me.score, 1)

        await send(rival.gain(100))  # overtaken again: only the rank changes
        moved = await next_frame(ws, "me")
        assert (moved["score"], moved["rank"]) == (me.score, 2)
        assert moved["version"] > mine["version"]
    await save_scores(pg, leaders)


async def test_anonymous_watchers_get_no_me_frames(client: Client, send: Send) -> None:
    player = new_player()
    async with client.ws_connect("/ws/scoreboard") as ws:
        await next_frame(ws, "top", wait_s=1.0)
        await send(player.gain(1))
        await send(player.gain(1))
        with pytest.raises(TimeoutError):
            await next_frame(ws, "me", wait_s=0.5)


async def test_connections_beyond_the_limit_are_told_to_retry(client: Client) -> None:
    open_ws = [await client.ws_connect("/ws/scoreboard") for _ in range(3)]
    try:
        extra = await client.ws_connect("/ws/scoreboard")
        msg = await extra.receive(timeout=5)
        assert msg.type == WSMsgType.CLOSE
        assert msg.data == CLOSE_TRY_LATER
    finally:
        for ws in open_ws:
            await ws.close()


async def test_flooding_client_is_closed_with_policy_violation(client: Client) -> None:
    async with client.ws_connect("/ws/scoreboard") as ws:
        await next_frame(ws, "top", wait_s=1.0)
        for i in range(30):
            await ws.send_str(f"hello {i}")
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type == WSMsgType.TEXT:
                pass
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == CLOSE_POLICY


async def test_oversized_message_closes_the_connection(client: Client) -> None:
    async with client.ws_connect("/ws/scoreboard") as ws:
        await next_frame(ws, "top", wait_s=1.0)
        await ws.send_str("x" * 2048)
        async with asyncio.timeout(5):
            while (msg := await ws.receive()).type == WSMsgType.TEXT:
                pass
    assert msg.type == WSMsgType.CLOSE
    assert msg.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_shutdown_closes_watchers_with_service_restart(
    make_settings: SettingsFactory,
) -> None:
    async with aiohttp.ClientSession() as session:
        async with serve(make_settings()) as client:
            url = client.make_url("/ws/scoreboard")
            watchers = [await session.ws_connect(url) for _ in range(2)]
            for ws in watchers:
                await next_frame(ws, "top", wait_s=1.0)
        # The server has shut down: each watcher was told to reconnect elsewhere.
        for ws in watchers:
            msg = await ws.receive(timeout=5)
            assert msg.type == WSMsgType.CLOSE
            assert msg.data == CLOSE_RESTART
            assert msg.extra == "service restart"
            await ws.close()
