"""The boards' routes on a real broadcaster (Redis and PostgreSQL): listing, cursor pages that
stay correct while scores change, around-me at the edges, standings, archives, and 400/404."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse

from broadcaster.components import components_key
from broadcaster.postgres_boards import PostgresBoards
from common.boards import BoardDefinition, save_definitions
from common.events import BoardChange, ScoreChanged
from common.postgres import create_pool
from testkit.broadcaster import Client, Player, Send, SettingsFactory, new_player, seed, serve

pytestmark = [pytest.mark.integration, pytest.mark.redis_cluster]

N = 25
T0 = datetime(2026, 2, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
async def board_id(pg_module: asyncpg.Connection) -> AsyncIterator[str]:
    """A UTC board with all-time and daily windows; retired afterwards."""
    board = f"t-{uuid.uuid4().hex[:12]}"
    definition = BoardDefinition(
        board_id=board, title="Routes", windows=("all-time", "daily"), redis_past_periods=1
    )
    await save_definitions(pg_module, [definition])
    yield board
    await pg_module.execute("UPDATE boards SET retired = true WHERE board_id = $1", board)


def _today() -> str:
    return datetime.now(UTC).date().isoformat()


@pytest.fixture(scope="module")
async def players(pg_module: asyncpg.Connection, board_id: str) -> list[Player]:
    """N players on today's daily period, scores 100, 99, ... (two tied at the end, the one
    who reached it first ranks higher), and the same on an old archived day."""
    people = [new_player("r") for _ in range(N + 1)]  # the last one is not on the board
    await seed(pg_module, people)
    rows = []
    for i, p in enumerate(people[:N]):
        score = 100 - i if i < N - 1 else 100 - (N - 2)  # the last two tie
        reached = T0 + timedelta(seconds=i)
        for window, period in (("daily", _today()), ("daily", "2020-01-01"), ("all-time", "all")):
            rows.append((board_id, window, period, p.user_id, score, i + 1, 1, reached))
    await pg_module.executemany(
        "INSERT INTO board_scores VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows
    )
    return people


@pytest.fixture(scope="module")
async def client(players: list[Player], make_settings: SettingsFactory) -> AsyncIterator[Client]:
    async with serve(make_settings()) as client:
        yield client


def _problem_json(value: bytes | str, **_params: str) -> Any:
    return json.loads(value)


# The public contract: every response below must be what docs/openapi.yaml says.
SPEC = OpenAPI.from_file_path(
    str(Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"),
    config=Config(extra_media_type_deserializers={"application/problem+json": _problem_json}),
)


async def _json(client: Client, path: str, status: int = 200, **params: str) -> Any:
    resp = await client.get(path, params=params)
    payload = await resp.read()
    assert resp.status == status, payload
    request = MockRequest("http://127.0.0.1:8080", "get", path, args=params)
    SPEC.validate_response(
        request,
        MockResponse(payload, status_code=resp.status, content_type=resp.content_type),
    )
    return json.loads(payload)


async def test_boards_lists_windows_with_their_current_period_and_next_reset(
    client: Client, board_id: str
) -> None:
    body = await _json(client, "/api/boards")
    boards = {b["board"]: b for b in body["boards"]}
    ours = boards[board_id]
    assert ours["time_zone"] == "UTC"
    daily = next(w for w in ours["windows"] if w["window"] == "daily")
    assert daily["current"]["period"] == _today()
    tomorrow = datetime.now(UTC).date() + timedelta(days=1)
    assert datetime.fromisoformat(daily["next_reset"]) == datetime(
        tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC
    )
    all_time = next(w for w in ours["windows"] if w["window"] == "all-time")
    assert all_time["current"]["period"] == "all"
    assert all_time["next_reset"] is None
    assert next(w["window"] for w in boards["global"]["windows"]) == "all-time"


async def test_pages_with_a_cursor_list_everyone_once_while_scores_change(
    client: Client, players: list[Player], board_id: str, send: Send
) -> None:
    path = f"/api/boards/{board_id}/all-time/top"
    first = await _json(client, path, limit="10")
    assert first["players"] == N
    assert [e["rank"] for e in first["entries"]] == list(range(1, 11))
    assert first["entries"][0]["user_id"] == str(players[0].user_id)
    # While the client pages, the player ranked 20th jumps to the top; nobody else moves.
    mover = players[19]
    await send(_change(mover, board_id, [("all-time", "all", 1000, 30)], version=2))
    await _until(lambda: _top_is(client, path, str(mover.user_id)))
    seen = [e["user_id"] for e in first["entries"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        page = await _json(client, path, limit="10", cursor=cursor)
        seen += [e["user_id"] for e in page["entries"]]
        cursor = page["next_cursor"]
    unchanged = [str(p.user_id) for i, p in enumerate(players[:N]) if i != 19]
    assert sorted(u for u in seen if u != str(mover.user_id)) == sorted(unchanged)
    assert len(seen) == len(set(seen)) == N - 1  # the mover passed the cursor: not seen again


async def _until(check: Callable[[], Awaitable[bool]], wait_s: float = 10.0) -> None:
    async with asyncio.timeout(wait_s):
        while not await check():  # noqa: ASYNC110 - polling the API is the point
            await asyncio.sleep(0.05)


async def _top_is(client: Client, path: str, user_id: str) -> bool:
    body = await _json(client, path, limit="1")
    return bool(body["entries"]) and body["entries"][0]["user_id"] == user_id


def _change(
    p: Player, board: str, entries: list[tuple[str, str, int, int]], version: int
) -> ScoreChanged:
    return ScoreChanged(
        action_id=uuid.uuid4(),
        user_id=p.user_id,
        username=p.username,
        delta=1,
        score=1,
        version=version,
        occurred_at=datetime.now(UTC),
        boards=tuple(
            BoardChange(board=board, window=w, period=per, score=s, entries=e)
            for w, per, s, e in entries
        ),
    )


async def test_around_is_right_at_rank_1_and_at_the_bottom(
    client: Client, players: list[Player], board_id: str
) -> None:
    path = f"/api/boards/{board_id}/daily/around"
    top = await _json(client, f"{path}/{players[0].user_id}", n="2")
    assert top["rank"] == 1
    assert [e["rank"] for e in top["entries"]] == [1, 2, 3]
    bottom = await _json(client, f"{path}/{players[N - 1].user_id}", n="3")
    assert bottom["rank"] == N
    assert [e["rank"] for e in bottom["entries"]] == [N - 3, N - 2, N - 1, N]
    # The last two tie on points: who reached it first ranks higher.
    assert bottom["entries"][-1]["user_id"] == str(players[N - 1].user_id)
    assert bottom["entries"][-1]["score"] == bottom["entries"][-2]["score"]
    middle = await _json(client, f"{path}/{players[10].user_id}", n="0")
    assert [e["user_id"] for e in middle["entries"]] == [str(players[10].user_id)]
    absent = await _json(client, f"{path}/{players[N].user_id}")
    assert absent["rank"] is None
    assert absent["entries"] == []
    await _json(client, f"{path}/{uuid.uuid4()}", 404)


async def test_a_players_standing_and_a_friends_list(
    client: Client, players: list[Player], board_id: str
) -> None:
    path = f"/api/boards/{board_id}/daily/users"
    third = await _json(client, f"{path}/{players[2].user_id}")
    assert third["rank"] == 3
    assert third["score"] == 98
    assert third["entries"] == 3
    assert third["players"] == N
    assert third["top_percent"] == round(100 * 3 / N, 2)
    assert third["period"] == _today()
    nobody = await _json(client, f"{path}/{players[N].user_id}")
    assert (nobody["rank"], nobody["score"], nobody["top_percent"]) == (None, 0, None)
    await _json(client, f"{path}/{uuid.uuid4()}", 404)
    ids = [players[5].user_id, players[1].user_id, players[N].user_id, uuid.uuid4()]
    friends = await _json(client, path, ids=",".join(map(str, ids)))
    assert [(e["user_id"], e["rank"]) for e in friends["entries"]] == [
        (str(players[1].user_id), 2),
        (str(players[5].user_id), 6),
    ]
    await _json(client, path, 400, ids=",".join(str(uuid.uuid4()) for _ in range(101)))
    await _json(client, path, 400, ids="not-a-uuid")
    await _json(client, path, 400)


async def test_closed_periods_stay_readable_from_postgresql(
    client: Client, players: list[Player], board_id: str
) -> None:
    old = await _json(client, f"/api/boards/{board_id}/daily/top", limit="3", period="2020-01-01")
    assert old["period"] == "2020-01-01"
    assert old["ends_at"] == "2020-01-02T00:00:00+00:00"
    assert [e["user_id"] for e in old["entries"]] == [str(p.user_id) for p in players[:3]]
    page2 = await _json(
        client, f"/api/boards/{board_id}/daily/top", limit="3", cursor=old["next_cursor"]
    )
    assert [e["rank"] for e in page2["entries"]] == [4, 5, 6]
    assert page2["period"] == "2020-01-01"  # the cursor keeps its period
    around = await _json(
        client, f"/api/boards/{board_id}/daily/around/{players[N - 1].user_id}",
        n="1", period="2020-01-01",
    )  # fmt: skip
    assert [e["rank"] for e in around["entries"]] == [N - 1, N]


async def test_the_consumer_feeds_the_current_period_in_redis(
    client: Client, players: list[Player], board_id: str, send: Send
) -> None:
    newcomer = players[N]
    today = _today()
    await send(_change(newcomer, board_id, [("daily", today, 500, 1)], version=1))

    async def on_top() -> bool:
        body = await _json(client, f"/api/boards/{board_id}/daily/top", limit="1")
        return bool(body["entries"][0]["user_id"] == str(newcomer.user_id))

    await _until(on_top)
    # A replay of the same version changes nothing.
    await send(_change(newcomer, board_id, [("daily", today, 1, 1)], version=1))
    await asyncio.sleep(0.5)
    me = await _json(client, f"/api/boards/{board_id}/daily/users/{newcomer.user_id}")
    assert (me["rank"], me["score"]) == (1, 500)


async def test_the_default_board_all_time_is_the_scoreboard(client: Client) -> None:
    legacy = await _json(client, "/api/scoreboard/top", limit="5")
    board = await _json(client, "/api/boards/global/all-time/top", limit="5")
    assert [(e["user_id"], e["score"]) for e in board["entries"]] == [
        (e["user_id"], e["score"]) for e in legacy["entries"]
    ]


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/boards/nope/daily/top", {}, 404),
        ("/api/boards/{b}/hourly/top", {}, 400),
        ("/api/boards/{b}/weekly/top", {}, 404),
        ("/api/boards/{b}/daily/top", {"period": "2026-13-01"}, 400),
        ("/api/boards/{b}/daily/top", {"period": "2026-W01"}, 400),
        ("/api/boards/{b}/daily/top", {"limit": "0"}, 400),
        ("/api/boards/{b}/daily/top", {"limit": "1001"}, 400),
        ("/api/boards/{b}/daily/top", {"cursor": "garbage"}, 400),
        ("/api/boards/{b}/daily/top", {"cursor": "YzF8eHx5fHp8MXwy"}, 400),
        ("/api/boards/{b}/daily/around/me", {}, 401),
        ("/api/boards/{b}/daily/around/{u}", {"n": "51"}, 400),
        ("/api/boards/{b}/daily/users/not-a-uuid", {}, 400),
    ],
)
async def test_bad_requests_are_4xx(
    client: Client, board_id: str, path: str, params: dict[str, str], status: int
) -> None:
    body = await _json(client, path.format(b=board_id, u=uuid.uuid4()), status, **params)
    assert body["status"] == status


async def test_a_cursor_of_another_period_is_refused(client: Client, board_id: str) -> None:
    old = await _json(client, f"/api/boards/{board_id}/daily/top", limit="2", period="2020-01-01")
    await _json(
        client, f"/api/boards/{board_id}/daily/top", 400, cursor=old["next_cursor"],
        period=_today(),
    )  # fmt: skip
    await _json(client, f"/api/boards/{board_id}/all-time/top", 400, cursor=old["next_cursor"])


async def test_a_period_rebuild_longer_than_its_lock_keeps_the_lock(
    pg_module: asyncpg.Connection, board_id: str, make_settings: SettingsFactory
) -> None:
    # One player per chunk, 2,000 of them, and a lock of 500 ms: the rebuild outlasts the lock
    # several times over, and another replica must still never get it while the rebuild runs.
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()  # kept in Redis
    crowd = [new_player("k") for _ in range(2000)]
    await seed(pg_module, crowd)
    await pg_module.executemany(
        "INSERT INTO board_scores VALUES ($1, 'daily', $5, $2, $3, 1, 1, $4)",
        [(board_id, p.user_id, i, T0, yesterday) for i, p in enumerate(crowd)],
    )
    settings = make_settings(rebuild_batch=1, rebuild_lock_ttl_s=0.5)
    async with serve(settings) as client:
        periods = client.app[components_key].periods
        t = await periods.resolve(board_id, "daily", yesterday, datetime.now(UTC))
        redis = periods._redis  # the store the period lives in
        await redis.drop(t.keys)
        loop = asyncio.get_running_loop()
        started = loop.time()
        rebuild = asyncio.ensure_future(periods.ensure_built(t))
        for _ in range(5000):  # until the rebuild holds it
            if await redis._redis.exists(t.keys.lock):
                break
            await asyncio.sleep(0.001)
        taken = 0
        while not rebuild.done():
            if await redis.acquire_lock(t.keys, "another replica", 1.0):
                taken += 1
                await redis.release_lock(t.keys, "another replica")
            await asyncio.sleep(0.01)
        assert await rebuild  # this call built it
        assert loop.time() - started > 2 * settings.rebuild_lock_ttl_s  # longer than the lock
        assert taken == 0
        page = await redis.page(t.keys, 1000, None)
        assert page is not None
        expected = await pg_module.fetchval(
            "SELECT count(*) FROM board_scores WHERE board_id = $1 AND period = $2",
            board_id,
            yesterday,
        )
        assert page.players == expected


async def test_a_period_count_read_from_postgresql_is_kept_a_second(
    pg_module: asyncpg.Connection, board_id: str, make_settings: SettingsFactory
) -> None:
    # The count is a pass over the whole period; reads within count_ttl_s reuse it.
    now = [0.0]
    pool = await create_pool(make_settings())
    try:
        boards = PostgresBoards(pool, count_ttl_s=1.0, clock=lambda: now[0])
        day = (T0.date() - timedelta(days=400 + uuid.uuid4().int % 3000)).isoformat()
        period = (board_id, "daily", day)
        crowd = [new_player("c") for _ in range(3)]
        await seed(pg_module, crowd)
        insert = "INSERT INTO board_scores VALUES ($1, 'daily', $2, $3, 5, 1, 1, $4)"
        await pg_module.execute(insert, board_id, day, crowd[0].user_id, T0)
        assert (await boards.page(period, 10, None)).players == 1
        await pg_module.execute(insert, board_id, day, crowd[1].user_id, T0)
        page = await boards.page(period, 10, None)
        assert (page.players, len(page.entries)) == (1, 2)  # the rows are current, the count kept
        now[0] += 1.01
        assert (await boards.page(period, 10, None)).players == 2
    finally:
        await pool.close()
