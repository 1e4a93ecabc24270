"""The Redis board store's Lua apply: idempotent, order-safe, tie rule, applied notices."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from broadcaster.redis_board import RedisBoard
from common.events import AppliedNotice
from common.keyspace import APPLIED_TTL_S, done_key, ticket_key
from common.redis_client import RedisClient
from testkit.broadcaster import new_player, subscribed

pytestmark = pytest.mark.redis_cluster

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


async def test_apply_is_idempotent_and_order_safe(board: RedisBoard) -> None:
    alice = new_player()
    v1 = alice.gain(10, T0)
    v2 = alice.gain(20, T0 + timedelta(seconds=1))
    v3 = alice.gain(5, T0 + timedelta(seconds=2))

    first = await board.apply_changes([v1, v3])
    late = await board.apply_changes([v2])  # older than what the board has: ignored
    again = await board.apply_changes([v3, v1])  # duplicates: ignored

    assert first is not None
    assert (first.applied, first.stale) == (2, 0)
    assert late is not None
    assert (late.applied, late.stale) == (0, 1)
    assert again is not None
    assert (again.applied, again.stale) == (0, 2)
    found = await board.standings([str(alice.user_id)])
    assert found is not None
    version, standings = found
    assert standings[str(alice.user_id)].score == 35
    # The board version is the sum of the users' versions: 3, however the events arrived.
    assert version == 3
    top = await board.top(10)
    assert top is not None
    assert [e.score for e in top.entries] == [35]


async def test_equal_scores_rank_who_reached_first_higher(board: RedisBoard) -> None:
    early, late, leader = new_player(), new_player(), new_player()
    await board.apply_changes(
        [
            late.gain(50, T0 + timedelta(seconds=5)),
            early.gain(50, T0),
            leader.gain(60, T0 + timedelta(seconds=9)),
        ]
    )
    top = await board.top(10)
    assert top is not None
    assert [e.user_id for e in top.entries] == [str(p.user_id) for p in (leader, early, late)]
    assert [e.rank for e in top.entries] == [1, 2, 3]
    # Overtaking: "late" moves to 70 and leaves no stale member behind.
    await board.apply_changes([late.gain(20, T0 + timedelta(seconds=10))])
    top = await board.top(10)
    assert top is not None
    assert [(e.username, e.score) for e in top.entries] == [
        (late.username, 70),
        (leader.username, 60),
        (early.username, 50),
    ]
    assert await board._redis.zcard(board.keys.rank) == 3


async def test_applied_changes_are_published_with_rank(
    board: RedisBoard, redis_client: RedisClient
) -> None:
    first, second = new_player(), new_player()
    await board.apply_changes([first.gain(100, T0)])
    pubsub = redis_client.pubsub()
    try:
        await subscribed(pubsub, board.keys.applied)
        change = second.gain(40, T0)
        await board.apply_changes([change, change])  # the duplicate publishes nothing
        after = second.gain(1, T0 + timedelta(seconds=1))
        await board.apply_changes([after])
        messages: list[dict[str, object]] = []
        async with asyncio.timeout(5):
            while len(messages) < 2:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if msg is None:
                    continue
                notice = json.loads(msg["data"])
                # On a cluster the first apply's notice, published on another node before the
                # subscription, may still come over the cluster bus after it.
                if notice["user_id"] == str(second.user_id):
                    messages.append(notice)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    # In the order of the versions: on a cluster the two publishes may leave from different
    # nodes, and the cluster bus does not keep their order (nobody needs it: a waiter waits
    # for its own action).
    messages.sort(key=lambda m: str(m["version"]))
    assert messages[0] == {
        "action_id": str(change.action_id),
        "user_id": str(second.user_id),
        "username": second.username,
        "score": 40,
        "version": 1,
        "rank": 2,
    }
    assert (messages[1]["action_id"], messages[1]["version"]) == (str(after.action_id), 2)


async def test_the_applied_notice_is_the_contracts(
    board: RedisBoard, redis_client: RedisClient
) -> None:
    """What the apply script publishes is what the gateway reads: the AppliedNotice model and its
    committed JSON Schema (schemas/applied-notice.v1.json) both accept it."""
    leader, player = new_player(), new_player()
    await board.apply_changes([leader.gain(500, T0)])
    pubsub = redis_client.pubsub()
    try:
        await subscribed(pubsub, board.keys.applied)
        change = player.gain(70, T0 + timedelta(seconds=1))
        await board.apply_changes([change])
        raw: bytes | None = None
        async with asyncio.timeout(5):
            while raw is None:
                msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                # (On a cluster the leader's notice may come after the subscription: see above.)
                if msg is not None and str(player.user_id).encode() in msg["data"]:
                    raw = msg["data"]
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]

    schema = json.loads((SCHEMAS / "applied-notice.v1.json").read_text())
    jsonschema.validate(json.loads(raw), schema, format_checker=jsonschema.FormatChecker())
    assert AppliedNotice.model_validate_json(raw) == AppliedNotice(
        action_id=change.action_id,
        user_id=player.user_id,
        username=player.username,
        score=70,
        version=1,
        rank=2,
    )


async def test_board_without_marker_refuses_changes(board: RedisBoard) -> None:
    await board._redis.delete(board.keys.built)
    player = new_player()
    assert await board.apply_changes([player.gain(1, T0)]) is None
    assert await board.top(10) is None
    assert await board.poll() is None
    # A rebuild's merge writes regardless; marking it built opens it again.
    await board.merge_rows([player.row()])
    await board.mark_built({"by": "test"})
    assert await board.poll() == 1


async def test_a_change_confirms_its_action_to_the_gateway(
    board: RedisBoard, redis_client: RedisClient
) -> None:
    """The action's done marker becomes "applied" (keeping the gateway's TTL, or a week when the
    claim was released meanwhile) and its ticket goes; rows from PostgreSQL touch nothing."""
    prefix = board.prefix
    player = new_player()
    claimed = player.gain(10, T0)
    released = player.gain(5, T0 + timedelta(seconds=1))
    for change in (claimed, released):
        await redis_client.set(ticket_key(prefix, change.action_id), "{}", ex=600)
    await redis_client.set(done_key(prefix, claimed.action_id), "c:1764240000000", ex=3600)

    await board.apply_changes([claimed, released])

    for change, ttl in ((claimed, 3600), (released, APPLIED_TTL_S)):
        done = done_key(prefix, change.action_id)
        assert await redis_client.get(done) == b"1"
        assert ttl - 100 < await redis_client.ttl(done) <= ttl
        assert await redis_client.exists(ticket_key(prefix, change.action_id)) == 0
        await redis_client.delete(done)
