"""Many board periods applied in one round trip (PeriodBoards.apply_all), and a period's pages,
on a Redis server and on a Redis Cluster: each period's answer in its place, a failing one alone;
pages whole, empty and past the end."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from broadcaster.period_boards import PeriodBoards, PeriodEntry
from broadcaster.standings import member_for
from common.keyspace import PeriodBoardKeys
from common.redis_client import RedisClient
from testkit.broadcaster import new_player
from testkit.env import TestEnv

pytestmark = [pytest.mark.integration, pytest.mark.redis_cluster]

T0 = datetime(2026, 2, 1, tzinfo=UTC)


def _entry(score: int, version: int = 1) -> PeriodEntry:
    p = new_player()
    return PeriodEntry(str(p.user_id), p.username, score, 1, version, member_for(p.user_id, T0))


async def test_periods_apply_together_each_with_its_own_answer(
    redis_client: RedisClient, test_env: TestEnv, redis_mode: str
) -> None:
    prefix = f"{test_env.redis_prefix}pa-{uuid.uuid4().hex[:8]}:"
    periods = PeriodBoards(redis_client)
    keys = [
        PeriodBoardKeys.for_period(prefix, f"b{i}", w, "2026-02-01")
        for i in range(30)
        for w in ("daily", "weekly")
    ]
    built, unbuilt, broken = keys[:-2], keys[-2], keys[-1]
    for k in built:
        await periods.mark_built(k, {"by": "test"}, None)
    await redis_client.set(broken.built, "1")
    await redis_client.set(broken.rank, "not a sorted set")  # its script fails: WRONGTYPE
    batch = [(k, [_entry(10 + i), _entry(5)], None) for i, k in enumerate(keys)]

    results = await periods.apply_all(batch)

    assert results[:-2] == [2] * len(built)
    assert results[-2] is None  # not built: nothing done, as apply() answers
    assert isinstance(results[-1], Exception), results[-1]
    for i, k in enumerate(built):
        page = await periods.page(k, 10, None)
        assert page is not None
        assert [e.score for e in page.entries] == [10 + i, 5]
    assert await periods.page(unbuilt, 10, None) is None
    # Applied again: every entry is stale now (the version rule), nothing changes.
    again = await periods.apply_all(batch[:-1])
    assert again == [0] * len(built) + [None]
    await redis_client.delete(broken.built)
    await redis_client.delete(broken.rank)


async def test_pages_of_a_period_whole_empty_and_past_the_end(
    redis_client: RedisClient, test_env: TestEnv, redis_mode: str
) -> None:
    # The page script looks a page's players up in one HMGET: a page with nobody on it (an
    # empty period, or a cursor at the last entry) must come back empty, not fail.
    prefix = f"{test_env.redis_prefix}pg-{uuid.uuid4().hex[:8]}:"
    periods = PeriodBoards(redis_client)
    keys = PeriodBoardKeys.for_period(prefix, "b", "daily", "2026-02-01")
    await periods.mark_built(keys, {"by": "test"}, None)
    empty = await periods.page(keys, 10, None)
    assert empty is not None
    assert (empty.players, empty.entries) == (0, ())

    entries = [_entry(score) for score in (30, 20, 10)]
    await periods.apply(keys, entries, None)
    whole = await periods.page(keys, 10, None)
    assert whole is not None
    assert [(e.rank, e.user_id, e.username, e.score) for e in whole.entries] == [
        (i + 1, e.user_id, e.username, e.score) for i, e in enumerate(entries)
    ]
    assert [e.member for e in whole.entries] == [e.member for e in entries]
    last = whole.entries[-1]
    past = await periods.page(keys, 10, (last.score, last.member))
    assert past is not None
    assert (past.players, past.entries) == (3, ())
