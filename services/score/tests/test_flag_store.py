"""Raising flags in PostgreSQL, with and without shadow quarantine (migration 0007)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from common.events import PlayerFlagged
from score.flag_store import FlagStore
from services.score.tests.support import add_users

pytestmark = pytest.mark.integration

STEPS = "SELECT steps FROM board_hold_steps"


def _flag(user_id: uuid.UUID) -> PlayerFlagged:
    return PlayerFlagged(
        flag_id=uuid.uuid4(),
        user_id=user_id,
        username="mallory",
        rate=100.0,
        z=9.0,
        median=9.0,
        mad=2.0,
        active_players=50,
        tau_s=5.0,
        flagged_at=datetime.now(UTC),
    )


async def test_under_quarantine_a_flag_holds_the_score_it_was_raised_at(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    scored, new = await add_users(pg, 2)
    await pg.execute(
        "INSERT INTO scores (user_id, score, version, reached_at) VALUES ($1, 1234, 3, now())",
        scored,
    )
    store = FlagStore(pool, quarantine=True)
    before = await pg.fetchval(STEPS)
    assert await store.raise_flag(_flag(scored))
    assert await store.raise_flag(_flag(new))  # no score yet: everything they earn waits
    assert not await store.raise_flag(_flag(scored))  # one open flag at a time: no step
    rows = await pg.fetch(
        "SELECT user_id, held_score FROM player_flags WHERE user_id = ANY($1::uuid[])",
        [scored, new],
    )
    assert {r["user_id"]: r["held_score"] for r in rows} == {scored: 1234, new: 0}
    assert await pg.fetchval(STEPS) == before + 2
    held = "SELECT held_score FROM board_holds WHERE user_id = $1"
    assert await pg.fetchval(held, scored) == 1234


async def test_without_quarantine_a_flag_holds_nothing(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    (user,) = await add_users(pg, 1)
    before = await pg.fetchval(STEPS)
    assert await FlagStore(pool).raise_flag(_flag(user))
    assert await pg.fetchval("SELECT held_score IS NULL FROM player_flags WHERE user_id = $1", user)
    assert await pg.fetchval(STEPS) == before
    assert not await pg.fetchval("SELECT count(*) FROM board_holds WHERE user_id = $1", user)
