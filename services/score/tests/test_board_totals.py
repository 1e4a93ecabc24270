"""Board totals against the real PostgreSQL: one update feeds every window of every board it
belongs to, exactly once, in the period of its ``accepted_at`` in the board's time zone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from common.boards import BoardDefinition, load_catalog, save_definitions
from common.events import ScoreChangedEvent
from score import board_admin
from score.commands import Command, Delivery
from score.store import ConcurrentApplyError, ScoreStore
from services.score.tests.support import add_users, command

pytestmark = pytest.mark.integration

PARIS = ZoneInfo("Europe/Paris")
# A type no other test uses, so the test board counts only this file's commands.
POINTS = 977


@pytest.fixture(autouse=True)
async def _no_leftover_outbox(pg: asyncpg.Connection) -> AsyncIterator[None]:
    start = await pg.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    yield
    await pg.execute("DELETE FROM outbox WHERE id > $1 AND sent_at IS NULL", start)


@pytest.fixture
async def board_id(pg: asyncpg.Connection) -> AsyncIterator[str]:
    """A Paris board fed by this file's action type only; retired afterwards."""
    board = f"t-{uuid.uuid4().hex[:12]}"
    definition = BoardDefinition(
        board_id=board,
        title="Test",
        action_types=(f"worth_{POINTS}",),
        windows=("all-time", "daily", "weekly", "monthly"),
        time_zone="Europe/Paris",
    )
    await save_definitions(pg, [definition])
    yield board
    await pg.execute("UPDATE boards SET retired = true WHERE board_id = $1", board)


def _at(user: uuid.UUID, accepted_at: datetime, offset: int) -> Command:
    """A command the gateway accepted at ``accepted_at`` (the injected clock)."""
    data = command(user, POINTS).model_copy(
        update={"accepted_at": accepted_at, "issued_at": accepted_at - timedelta(seconds=5)}
    )
    return Command(Delivery("t", 0, offset, None, None, ()), data)


async def _rows(
    pg: asyncpg.Connection, board: str, user: uuid.UUID
) -> dict[tuple[str, str], tuple[int, int]]:
    rows = await pg.fetch(
        "SELECT window_id, period, score, entries FROM board_scores"
        " WHERE board_id = $1 AND user_id = $2",
        board,
        user,
    )
    return {(r["window_id"], r["period"]): (r["score"], r["entries"]) for r in rows}


async def test_periods_follow_accepted_at_in_the_board_zone_across_midnight_and_dst(
    pool: asyncpg.Pool, pg: asyncpg.Connection, board_id: str
) -> None:
    (alice,) = await add_users(pg, 1)
    # Paris switches to summer time on 2026-03-29 at 02:00: the day is 23 hours long.
    accepted = [
        datetime(2026, 3, 28, 23, 59, 59, 900_000, tzinfo=PARIS),  # UTC+1
        datetime(2026, 3, 29, 0, 0, 0, 100_000, tzinfo=PARIS),
        datetime(2026, 3, 29, 23, 59, 59, 900_000, tzinfo=PARIS),  # UTC+2 by now
        datetime(2026, 3, 30, 0, 0, 0, 100_000, tzinfo=PARIS),  # a Monday: a new ISO week
    ]
    batch = [_at(alice, t, i) for i, t in enumerate(accepted)]
    # Applied now, long after every one of those midnights: the accepted time decides.
    plan = await ScoreStore(pool).apply(batch)
    assert len(plan.applied) == 4

    p = POINTS
    assert await _rows(pg, board_id, alice) == {
        ("all-time", "all"): (4 * p, 4),
        ("daily", "2026-03-28"): (p, 1),
        ("daily", "2026-03-29"): (2 * p, 2),
        ("daily", "2026-03-30"): (p, 1),
        ("weekly", "2026-W13"): (3 * p, 3),
        ("weekly", "2026-W14"): (p, 1),
        ("monthly", "2026-03"): (4 * p, 4),
    }
    # The default board counts the same actions in UTC days (its all-time window is `scores`).
    assert await _rows(pg, "global", alice) == {
        ("daily", "2026-03-28"): (2 * p, 2),  # 22:59:59.9 and 23:00:00.1 UTC
        ("daily", "2026-03-29"): (2 * p, 2),  # 21:59:59.9 and 22:00:00.1 UTC
        ("weekly", "2026-W13"): (4 * p, 4),
        ("monthly", "2026-03"): (4 * p, 4),
    }

    # Each event carries the totals right after its own action, for every board period.
    payloads = await pg.fetch(
        "SELECT payload FROM outbox WHERE event_key = $1 ORDER BY id",  # (board ids key others)
        str(alice).encode(),
    )
    events = [ScoreChangedEvent.model_validate_json(r["payload"]).data for r in payloads]
    ours = [
        {(b.window, b.period): (b.score, b.entries) for b in e.boards if b.board == board_id}
        for e in events
    ]
    assert ours[1] == {
        ("all-time", "all"): (2 * p, 2),
        ("daily", "2026-03-29"): (p, 1),
        ("weekly", "2026-W13"): (2 * p, 2),
        ("monthly", "2026-03"): (2 * p, 2),
    }
    assert ours[3][("weekly", "2026-W14")] == (p, 1)
    assert ours[3][("all-time", "all")] == (4 * p, 4)
    assert {b.board for b in events[0].boards} == {board_id, "global"}


async def test_a_replayed_or_raced_batch_counts_on_the_boards_once(
    pool: asyncpg.Pool, pg: asyncpg.Connection, board_id: str
) -> None:
    users = await add_users(pg, 3)
    now = datetime.now(UTC)
    batch = [_at(u, now, i) for i, u in enumerate(users * 2)]

    async def apply_retrying() -> None:
        store = ScoreStore(pool)
        for _ in range(20):
            try:
                await store.apply(batch)
                return
            except ConcurrentApplyError:
                await asyncio.sleep(0.01)
        raise AssertionError("never applied")

    await asyncio.gather(apply_retrying(), apply_retrying())
    await ScoreStore(pool).apply(batch)  # a redelivery
    for u in users:
        rows = await _rows(pg, board_id, u)
        assert rows[("all-time", "all")] == (2 * POINTS, 2)
        assert sum(1 for w, _ in rows if w == "daily") == 1


async def test_a_batch_past_the_board_rows_bound_applies_in_runs_and_counts_once(
    pool: asyncpg.Pool, pg: asyncpg.Connection, board_id: str
) -> None:
    # Each command counts in this board's 4 windows, and in those of the boards other tests
    # left active for every type: a bound of twice that cuts a batch of 12 into runs of 2.
    users = await add_users(pg, 4)
    now = datetime.now(UTC)
    batch = [_at(u, now, i) for i, u in enumerate(users * 3)]
    feeding = (await load_catalog(pg)).feeding(f"worth_{POINTS}")
    periods = sum(len(b.counted_windows) for b in feeding)
    assert periods >= 4
    store = ScoreStore(pool, max_board_rows=2 * periods + periods // 2)
    assert [len(run) for run in await store._runs(batch)] == [2] * 6

    plan = await store.apply(batch)

    assert [a.command for a in plan.applied] == batch  # all of them, in stream order
    assert [a.version for a in plan.applied[:4]] == [1, 1, 1, 1]
    assert [a.version for a in plan.applied[-4:]] == [3, 3, 3, 3]
    # Six transactions wrote the actions (one per run).
    runs = await pg.fetchval(
        "SELECT count(DISTINCT xmin::text) FROM actions WHERE action_id = ANY($1::uuid[])",
        [c.data.action_id for c in batch],
    )
    assert runs == 6
    for u in users:
        rows = await _rows(pg, board_id, u)
        assert rows[("all-time", "all")] == (3 * POINTS, 3)
    again = await store.apply(batch)  # a redelivery: every run finds its commands applied
    assert again.applied == []
    assert len(again.duplicates) == len(batch)


async def test_boards_defined_or_retired_count_from_the_next_batch(
    pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    (bob,) = await add_users(pg, 1)
    store = ScoreStore(pool)
    await store.apply([_at(bob, datetime.now(UTC), 0)])  # the store has loaded the boards
    board = f"t-{uuid.uuid4().hex[:12]}"
    await save_definitions(
        pg,
        [
            BoardDefinition(
                board_id=board, title="Late", action_types=(f"worth_{POINTS}",), windows=("daily",)
            )
        ],
    )
    try:
        await store.apply([_at(bob, datetime.now(UTC), 1)])
        assert list((await _rows(pg, board, bob)).values()) == [(POINTS, 1)]
        await pg.execute(
            "UPDATE boards SET retired = true, revision = nextval('boards_revision_seq')"
            " WHERE board_id = $1",
            board,
        )
        await store.apply([_at(bob, datetime.now(UTC), 2)])
        assert list((await _rows(pg, board, bob)).values()) == [(POINTS, 1)]
    finally:
        await pg.execute("UPDATE boards SET retired = true WHERE board_id = $1", board)


async def test_operators_load_list_and_retire_boards_from_a_file(
    pool: asyncpg.Pool, tmp_path: Path
) -> None:
    board = f"t-{uuid.uuid4().hex[:12]}"
    path = tmp_path / "boards.toml"
    path.write_text(
        f'[[board]]\nboard_id = "{board}"\ntitle = "Filed"\nwindows = ["weekly"]\n'
        'time_zone = "Asia/Tokyo"\n'
    )
    assert await board_admin.load(pool, path) == {"written": 1, "boards": [board]}
    listed = {b["board_id"]: b for b in (await board_admin.listing(pool))["boards"]}
    assert listed[board]["time_zone"] == "Asia/Tokyo"
    assert "global" in listed
    assert await board_admin.retire(pool, board) == {"retired": board}
    assert board not in {b["board_id"] for b in (await board_admin.listing(pool))["boards"]}
    with pytest.raises(board_admin.CannotRetireDefault):
        await board_admin.retire(pool, "global")
    with pytest.raises(board_admin.UnknownBoard):
        await board_admin.retire(pool, "no-such-board")
    path.write_text('[[board]]\nboard_id = "x"\ntitle = "Bad"\nwindows = ["hourly"]\n')
    with pytest.raises(ValueError, match="hourly"):
        await board_admin.load(pool, path)
