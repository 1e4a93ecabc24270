"""The board's keys on a real three-master Redis Cluster: one slot per board period, the periods
spread over the nodes, an action's done marker and ticket marked applied on whichever node
holds them, and a broadcaster with its boards on the cluster and the actions on the server the
gateway shares (docs/architecture.md "Redis Cluster layout").

The board tests themselves run on the cluster too (``redis_cluster`` marker, conftest.py).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoPermissionError, ResponseError

from broadcaster.components import components_key
from broadcaster.period_boards import PeriodBoards, PeriodEntry
from broadcaster.redis_board import RedisBoard
from broadcaster.standings import member_for
from common import redis_access
from common.keyspace import BoardKeys, PeriodBoardKeys, done_key, ticket_key
from common.redis_client import RedisClient, create_redis_or_cluster
from common.settings import CommonSettings
from testkit.broadcaster import Send, SettingsFactory, applied_inbox, new_player, seed, serve
from testkit.env import TestEnv
from testkit.redis_cluster import LocalRedisCluster

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture
async def cluster(redis_cluster: LocalRedisCluster) -> AsyncIterator[RedisCluster]:
    """The broadcaster's client of the cluster (common.redis_client)."""
    client = create_redis_or_cluster(CommonSettings.load(redis_url=redis_cluster.url))
    assert isinstance(client, RedisCluster)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def prefix(test_env: TestEnv) -> str:
    """A key prefix of this test's own."""
    return f"{test_env.redis_prefix}cl-{uuid.uuid4().hex[:8]}:"


async def _keys_by_node(redis_cluster: LocalRedisCluster, prefix: str) -> dict[int, set[str]]:
    """The keys under ``prefix`` that each node (by port) holds itself: a node's SCAN lists
    only its own slots."""
    found: dict[int, set[str]] = {}
    for port in redis_cluster.ports:
        node = aioredis.from_url(redis_cluster.node_url(port), decode_responses=True)
        try:
            found[port] = {k async for k in node.scan_iter(match=f"{prefix}*", count=1000)}
        finally:
            await node.aclose()
    return found


async def _one_slot(cluster: RedisCluster, keys: list[str]) -> int:
    """The slot all ``keys`` hash to, as the server computes it (CLUSTER KEYSLOT)."""
    slots = {int(await cluster.cluster_keyslot(k)) for k in keys}
    assert len(slots) == 1, dict(zip(keys, slots, strict=False))
    return slots.pop()


def _port_of(cluster: RedisCluster, key: str) -> int:
    node = cluster.get_node_from_key(key)
    assert node is not None
    return int(node.port)


async def test_each_board_period_is_one_slot_and_the_periods_spread_over_the_nodes(
    cluster: RedisCluster, redis_cluster: LocalRedisCluster, prefix: str
) -> None:
    # The main board (the default board's all-time window): every key in one slot.
    main = BoardKeys.for_prefix(prefix)
    await _one_slot(cluster, [*main.board, main.lock])
    # Periods of other boards: pick ones until each of the three masters holds one.
    chosen: dict[int, PeriodBoardKeys] = {}
    for i in range(100):
        keys = PeriodBoardKeys.for_period(prefix, f"cluster-{i}", "daily", "2026-02-01")
        await _one_slot(cluster, [*keys.board, keys.lock])
        chosen.setdefault(_port_of(cluster, keys.rank), keys)
        if len(chosen) == len(redis_cluster.ports):
            break
    assert sorted(chosen) == sorted(redis_cluster.ports)

    # Write each period through the broadcaster's scripts, as a rebuild does.
    periods = PeriodBoards(cluster)
    player = new_player()
    for keys in chosen.values():
        entry = PeriodEntry(
            str(player.user_id), player.username, 10, 1, 1, member_for(player.user_id, T0)
        )
        assert await periods.apply(keys, [entry], None, require_built=False) == 1
        await periods.mark_built(keys, {"by": "test"}, None)
        page = await periods.page(keys, 10, None)
        assert page is not None
        assert [(e.user_id, e.score) for e in page.entries] == [(str(player.user_id), 10)]

    # Each node holds exactly the period it owns, all four keys of it.
    held = await _keys_by_node(redis_cluster, prefix)
    for port, keys in chosen.items():
        assert held[port] == set(keys.board)

    # Dropping a period (one DEL of its keys, one slot) empties its node only.
    first_port, first = next(iter(chosen.items()))
    await periods.drop(first)
    held = await _keys_by_node(redis_cluster, prefix)
    assert held[first_port] == set()
    assert all(held[port] == set(keys.board) for port, keys in chosen.items() if port != first_port)


async def test_a_change_marks_its_action_applied_on_the_node_that_holds_it(
    cluster: RedisCluster, redis_cluster: LocalRedisCluster, prefix: str
) -> None:
    board = RedisBoard(cluster, prefix)
    await board.mark_built({"by": "test"})
    board_port = _port_of(cluster, board.keys.rank)
    player = new_player()
    # An action whose ticket and marker live on another node than the board.
    change = player.gain(10, T0)
    while _port_of(cluster, done_key(prefix, change.action_id)) == board_port:
        change = change.model_copy(update={"action_id": uuid.uuid4()})
    done, ticket = done_key(prefix, change.action_id), ticket_key(prefix, change.action_id)
    assert await _one_slot(cluster, [done, ticket]) != await _one_slot(cluster, [board.keys.rank])
    await cluster.set(ticket, "{}", ex=600)
    await cluster.set(done, "p:1764240000000", ex=3600)

    result = await board.apply_changes([change])

    assert result is not None
    assert result.applied == 1
    assert await cluster.get(done) == b"1"
    assert 3500 < await cluster.ttl(done) <= 3600  # the gateway's TTL kept
    assert await cluster.exists(ticket) == 0
    top = await board.top(10)
    assert top is not None
    assert [(e.user_id, e.score) for e in top.entries] == [(str(player.user_id), 10)]
    held = await _keys_by_node(redis_cluster, prefix)
    assert done in held[_port_of(cluster, done)]
    assert {board.keys.rank, board.keys.users, board.keys.version} <= held[board_port]
    # A replay changes nothing and marks nothing new.
    again = await board.apply_changes([change])
    assert again is not None
    assert (again.applied, again.stale) == (0, 1)
    assert await cluster.get(done) == b"1"


async def test_the_cluster_refuses_a_script_given_keys_of_two_slots(
    cluster: RedisCluster, prefix: str
) -> None:
    """Why the apply script no longer marks actions itself: the board and an action are in
    different slots, and a cluster runs a script only on keys of one."""
    board = BoardKeys.for_prefix(prefix)
    action = uuid.uuid4()
    keys = [board.rank, done_key(prefix, action)]
    while len({int(await cluster.cluster_keyslot(k)) for k in keys}) == 1:
        action = uuid.uuid4()
        keys = [board.rank, done_key(prefix, action)]
    node = cluster.get_node_from_key(board.rank)
    with pytest.raises(ResponseError, match="hash to the same slot"):
        await cluster.execute_command("EVAL", "return 1", 2, *keys, target_nodes=node)


async def test_the_boards_on_the_cluster_and_the_actions_on_the_gateways_redis(
    make_settings: SettingsFactory,
    redis_cluster: LocalRedisCluster,
    redis_client: RedisClient,
    pg: asyncpg.Connection,
    send: Send,
) -> None:
    """SCOREBOARD_BOARD_REDIS_URL on the cluster, SCOREBOARD_REDIS_URL on the server the
    gateway uses: the board lives on the cluster only; the marker, the ticket and the notice
    the gateway waits for are on the server."""
    players = [new_player() for _ in range(3)]
    for i, p in enumerate(players):
        p.gain(10 * (i + 1), T0)
    await seed(pg, players)
    settings = make_settings(board_redis_url=redis_cluster.url)
    assert settings.redis_url != redis_cluster.url  # the shared server
    async with serve(settings) as client:
        board = client.app[components_key].board
        mover = players[0]
        change = mover.gain(10**6)
        done, ticket = (
            done_key(settings.redis_prefix, change.action_id),
            ticket_key(settings.redis_prefix, change.action_id),
        )
        await redis_client.set(ticket, "{}", ex=600)
        await redis_client.set(done, "p:1764240000000", ex=3600)
        async with applied_inbox(redis_client, board.keys.applied) as inbox:
            await send(change)
            applied = await inbox.wait_for(change.action_id)
        assert await redis_client.get(done) == b"1"
        assert await redis_client.exists(ticket) == 0
        # The notice ranks the player as the board (on the cluster) does.
        resp = await client.get(f"/api/scoreboard/users/{mover.user_id}")
        standing = await resp.json()
        assert standing["score"] == applied["score"] == mover.score
        assert standing["rank"] == applied["rank"]
        ready = await client.get("/readyz")
        assert ready.status == 200
    on_cluster = set().union(*(await _keys_by_node(redis_cluster, settings.redis_prefix)).values())
    k = board.keys
    assert {k.rank, k.users, k.version, k.built} <= on_cluster
    on_server = [
        k async for k in redis_client.scan_iter(match=f"{settings.redis_prefix}*", count=1000)
    ]
    assert on_server == [done.encode()]  # the board is not there; the ticket is gone
    await redis_client.delete(done)


async def test_the_service_users_are_on_every_node(
    cluster: RedisCluster, redis_cluster: LocalRedisCluster, prefix: str
) -> None:
    """``scoreboard-redis-users`` on a cluster URL (common.redis_access): ACL users are per node,
    so each node must know them; the broadcaster's user then reaches its boards on every node
    and nothing of the gateway's."""
    run = uuid.uuid4().hex[:8]
    passwords = {s: f"{s}-{run}" for s in redis_access.SERVICES}
    names = await redis_access.ensure_users(
        cluster, prefix, passwords, name=f"cl-{run}-{{service}}"
    )
    try:
        for port in redis_cluster.ports:
            node = aioredis.from_url(redis_cluster.node_url(port))
            try:
                users = await node.acl_users()
                assert set(names) <= {u if isinstance(u, str) else u.decode() for u in users}
            finally:
                await node.aclose()
        seeds = ",".join(f"127.0.0.1:{port}" for port in redis_cluster.ports)
        url = f"redis+cluster://cl-{run}-broadcaster:{passwords['broadcaster']}@{seeds}"
        broadcaster = create_redis_or_cluster(CommonSettings.load(redis_url=url))
        try:
            periods: dict[int, PeriodBoardKeys] = {}  # one on each node
            for i in range(100):
                keys = PeriodBoardKeys.for_period(prefix, f"acl-{i}", "daily", "2026-02-01")
                periods.setdefault(_port_of(cluster, keys.rank), keys)
            assert len(periods) == len(redis_cluster.ports)
            for keys in periods.values():
                await broadcaster.set(keys.built, "{}")  # its boards, on whichever node
            with pytest.raises(NoPermissionError):
                await broadcaster.set(f"{prefix}rl:user:x", "1")  # the gateway's
        finally:
            await broadcaster.aclose()
    finally:
        await cluster.acl_deluser(*names, target_nodes=cluster.get_nodes())
