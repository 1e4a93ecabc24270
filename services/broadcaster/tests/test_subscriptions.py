"""Live subscriptions on /ws/scoreboard (real Redis, PostgreSQL and Kafka): snapshot on subscribe,
tagged top frames as a period's top changes (at most tick_hz a second per connection), a period
frame at the reset (injected clock), error frames that keep the connection, the cap."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp import ClientWebSocketResponse, WSMsgType

from broadcaster.components import components_key
from broadcaster.frames import CLOSE_TOO_SLOW
from broadcaster.subscriptions import MAX_SUBSCRIPTIONS
from common import moderation
from common.boards import BoardDefinition, Season, save_definitions
from common.events import BoardChange, ScoreChanged
from common.health import registry_key
from common.wsframes import decode_close, encode_frame
from testkit.broadcaster import (
    Client,
    Player,
    RawWebSocket,
    Send,
    SettingsFactory,
    eventually,
    new_player,
    parse_frames,
    seed,
    serve,
)

pytestmark = pytest.mark.integration

N = 12
T0 = datetime(2026, 2, 1, tzinfo=UTC)
WINDOWS = ("all-time", "daily", "weekly", "monthly")


def _today() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, now.day, tzinfo=UTC)


@pytest.fixture(scope="module")
async def board_ids(pg_module: asyncpg.Connection) -> AsyncIterator[list[str]]:
    """Two UTC boards with four windows each; retired afterwards."""
    ids = [f"s-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    await save_definitions(
        pg_module,
        [
            BoardDefinition(board_id=b, title="Live", windows=WINDOWS, redis_past_periods=1)
            for b in ids
        ],
    )
    yield ids
    await pg_module.execute("UPDATE boards SET retired = true WHERE board_id = ANY($1)", ids)


@pytest.fixture(scope="module")
async def players(pg_module: asyncpg.Connection, board_ids: list[str]) -> list[Player]:
    """N players on both boards: today's daily period 100, 99, ...; yesterday's the other way
    round (the first player last)."""
    people = [new_player("s") for _ in range(N)]
    await seed(pg_module, people)
    today = _today().date()
    rows = []
    for i, p in enumerate(people):
        reached = T0 + timedelta(seconds=i)
        rows.append((board_ids[0], "daily", today.isoformat(), p.user_id, 100 - i, 1, 1, reached))
        yesterday = (today - timedelta(days=1)).isoformat()
        rows.append((board_ids[0], "daily", yesterday, p.user_id, 50 + i, 1, 1, reached))
        rows.append((board_ids[1], "daily", today.isoformat(), p.user_id, 100 - i, 1, 1, reached))
        rows.append((board_ids[1], "daily", yesterday, p.user_id, 50 + i, 1, 1, reached))
    await pg_module.executemany(
        "INSERT INTO board_scores VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows
    )
    return people


@pytest.fixture(scope="module")
async def client(players: list[Player], make_settings: SettingsFactory) -> AsyncIterator[Client]:
    async with serve(make_settings()) as client:
        yield client


async def _frame(ws: ClientWebSocketResponse, kind: str, wait_s: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(wait_s):
        while True:
            msg = await ws.receive()
            assert msg.type == WSMsgType.TEXT, msg
            frame: dict[str, Any] = json.loads(msg.data)
            if frame["type"] == kind:
                return frame


async def _subscribe(
    ws: ClientWebSocketResponse, board: str, window: str, **extra: Any
) -> dict[str, Any]:
    await ws.send_str(json.dumps({"type": "subscribe", "board": board, "window": window, **extra}))
    async with asyncio.timeout(5.0):
        while True:
            frame = json.loads((await ws.receive()).data)
            if frame["type"] == "error" or frame.get("board") == board:
                return dict(frame)


def _change(
    p: Player, board: str, score: int, version: int, windows: tuple[str, ...] = ("daily",)
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
            BoardChange(
                board=board,
                window=w,
                period="all" if w == "all-time" else _today().date().isoformat(),
                score=score,
                entries=2,
            )
            for w in windows
        ),
    )


@pytest.mark.redis_cluster
async def test_snapshot_then_tagged_frames_as_the_period_top_changes(
    client: Client, players: list[Player], board_ids: list[str], send: Send
) -> None:
    board = board_ids[0]
    async with client.ws_connect("/ws/scoreboard") as ws:
        await _frame(ws, "top")  # the default board's frame, untagged, as ever
        snap = await _subscribe(ws, board, "daily", around=5)
        assert snap["type"] == "top"
        assert (snap["board"], snap["window"]) == (board, "daily")
        assert snap["period"] == _today().date().isoformat()
        assert [e["user_id"] for e in snap["entries"]] == [str(p.user_id) for p in players[:10]]
        assert snap["entries"][0] == {
            "rank": 1,
            "user_id": str(players[0].user_id),
            "username": players[0].username,
            "score": 100,
            "entries": 1,
        }
        # The 11th player jumps to the top: one tagged frame says so.
        mover = players[10]
        await send(_change(mover, board, 1000, version=2))
        frame = await _frame(ws, "top")
        assert frame["board"] == board
        assert frame["period"] == snap["period"]
        assert frame["entries"][0]["user_id"] == str(mover.user_id)
        assert frame["entries"][0]["score"] == 1000
        assert frame["version"] > snap["version"]
        # A second connection subscribing now gets the same state at once.
        async with client.ws_connect("/ws/scoreboard") as other:
            again = await _subscribe(other, board, "daily")
        assert again["entries"] == frame["entries"]


async def test_frames_to_one_connection_stay_within_tick_hz(
    client: Client, players: list[Player], board_ids: list[str], send: Send
) -> None:
    board = board_ids[0]
    async with client.ws_connect("/ws/scoreboard") as ws:
        await _subscribe(ws, board, "daily")
        await _subscribe(ws, board, "all-time")
        arrivals: list[float] = []
        loop = asyncio.get_running_loop()
        last: dict[str, dict[str, Any]] = {}

        async def changes() -> None:
            # 40 changes as fast as Kafka takes them, each a new top of both subscriptions.
            for i in range(40):
                both = ("daily", "all-time")
                await send(_change(players[i % N], board, 2000 + i, version=10 + i, windows=both))

        async def frames() -> None:
            while True:
                frame = json.loads((await ws.receive()).data)
                if frame["type"] == "top":
                    arrivals.append(loop.time())
                    last[frame["window"]] = frame

        sending = asyncio.create_task(changes())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3.0):
                await frames()
        await sending
    # Each subscription coalesced into its newest state...
    assert last["daily"]["entries"][0]["score"] == 2039
    assert last["all-time"]["entries"][0]["score"] == 2039
    # ...and the two together kept to tick_hz frames a second on the connection.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # tick_hz = 10: frames are 100 ms apart at the server (the client's reads jitter a little)
    assert all(g >= 0.07 for g in gaps), gaps
    assert len(arrivals) <= 3.0 * 10 + 1


async def test_bad_requests_get_error_frames_and_the_connection_stays(
    client: Client, players: list[Player], board_ids: list[str]
) -> None:
    async with client.ws_connect("/ws/scoreboard") as ws:
        for request, code in [
            ({"type": "subscribe", "board": "no-such-board", "window": "daily"}, "unknown_board"),
            ({"type": "subscribe", "board": board_ids[0], "window": "hourly"}, "unknown_window"),
            ({"type": "subscribe", "board": board_ids[0], "window": "season"}, "unknown_window"),
            (
                {"type": "subscribe", "board": board_ids[0], "window": "daily", "around": 99},
                "bad_request",
            ),
            ({"type": "dance"}, "bad_request"),
            ({"type": "subscribe", "board": 3, "window": "daily"}, "bad_request"),
        ]:
            await ws.send_str(json.dumps(request))
            error = await _frame(ws, "error")
            assert error["code"] == code, (request, error)
        await ws.send_str("{not json")
        assert (await _frame(ws, "error"))["code"] == "bad_request"
        # Still open, and it works.
        assert (await _subscribe(ws, board_ids[0], "daily"))["type"] == "top"


async def test_at_most_max_subscriptions_then_unsubscribe_frees_one(
    client: Client, players: list[Player], board_ids: list[str]
) -> None:
    feeds = [(b, w) for b in board_ids for w in WINDOWS]
    assert len(feeds) == MAX_SUBSCRIPTIONS
    async with client.ws_connect("/ws/scoreboard") as ws:
        for b, w in feeds:
            frame = await _subscribe(ws, b, w)
            assert frame["type"] == "top"
            assert frame["window"] == w
        assert (await _subscribe(ws, b, w))["type"] == "top"  # again: a fresh snapshot
        extra = await _subscribe(ws, "global", "all-time")
        assert extra["type"] == "error"
        assert extra["code"] == "too_many_subscriptions"
        await asyncio.sleep(1.1)  # 10 messages were the burst ws_inbound_rate lets through
        await ws.send_str(json.dumps({"type": "unsubscribe", "board": b, "window": w}))
        assert (await _frame(ws, "unsubscribed"))["window"] == w
        top = await _subscribe(ws, "global", "all-time")
        assert top["type"] == "top"
        assert top["period"] == "all"


async def test_the_reset_sends_a_period_frame_then_the_new_period(
    client: Client, players: list[Player], board_ids: list[str]
) -> None:
    subs = client.app[components_key].fanout.subscriptions
    assert subs is not None
    today = _today()
    board = board_ids[1]  # a feed of its own (the clock is this test's)
    subs.clock = lambda: today - timedelta(milliseconds=500)
    try:
        async with client.ws_connect("/ws/scoreboard") as ws:
            before = await _subscribe(ws, board, "daily")
            yesterday = (today - timedelta(days=1)).date().isoformat()
            assert before["period"] == yesterday
            assert before["entries"][0]["user_id"] == str(players[-1].user_id)
            subs.clock = lambda: today + timedelta(milliseconds=500)
            rolled = await _frame(ws, "period")
            assert rolled["board"] == board
            assert rolled["closed"] == yesterday
            assert rolled["current"]["period"] == today.date().isoformat()
            assert datetime.fromisoformat(rolled["next_reset"]) == today + timedelta(days=1)
            after = await _frame(ws, "top")
            assert after["period"] == today.date().isoformat()
            assert after["entries"][0]["user_id"] == str(players[0].user_id)
    finally:
        subs.clock = lambda: datetime.now(UTC)


@pytest.mark.redis_cluster
async def test_around_follows_the_players_own_rank_and_neighbours(
    client: Client, players: list[Player], board_ids: list[str], send: Send
) -> None:
    board = board_ids[1]
    me = players[6]  # 7th today on board 1 (score 94)
    headers = {"X-Scoreboard-User-Id": str(me.user_id)}
    async with client.ws_connect("/ws/scoreboard", headers=headers) as ws:
        await _subscribe(ws, board, "daily", around=2)
        first = await _frame(ws, "around")
        assert first["board"] == board
        assert first["rank"] == 7
        assert [e["rank"] for e in first["entries"]] == [5, 6, 7, 8, 9]
        assert first["entries"][2]["user_id"] == str(me.user_id)
        # The player climbs to second: a new around frame, clipped at rank 1.
        await send(_change(me, board, 100, version=5))  # ties the leader, reached later
        moved = await _frame(ws, "around")
        assert moved["rank"] == 2
        assert [e["rank"] for e in moved["entries"]] == [1, 2, 3, 4]
        assert moved["entries"][1]["user_id"] == str(me.user_id)
        # Someone far below moves but stays below: the player's neighbourhood is unchanged,
        # so no around frame (the top list changes nothing either: no frames at all).
        await send(_change(players[11], board, 90, version=5))
        with pytest.raises(TimeoutError):
            await _frame(ws, "around", wait_s=0.6)
    # An anonymous subscriber asking for around gets the top only.
    async with client.ws_connect("/ws/scoreboard") as anon:
        await _subscribe(anon, board, "daily", around=2)
        with pytest.raises(TimeoutError):
            await _frame(anon, "around", wait_s=0.3)


async def test_a_stuck_subscriber_is_skipped_then_closed_and_delays_no_one(
    make_settings: SettingsFactory, players: list[Player], board_ids: list[str], send: Send
) -> None:
    board = board_ids[0]
    settings = make_settings(
        ws_stuck_timeout_s=2.0,
        ws_slow_buffer_bytes=8192,
        ws_socket_sndbuf=8192,
        ws_close_grace_s=10.0,  # the close frame waits behind what it did not read
    )
    request = json.dumps({"type": "subscribe", "board": board, "window": "daily"}).encode()
    async with serve(settings) as client:
        assert client.server.port is not None
        stuck = await RawWebSocket.connect(client.server.port, rcvbuf=4096)
        try:
            await asyncio.get_running_loop().sock_sendall(
                stuck.sock, encode_frame(0x1, request, mask=True)
            )
            async with client.ws_connect("/ws/scoreboard") as normal:
                await _subscribe(normal, board, "daily")
                loop = asyncio.get_running_loop()
                lags: list[float] = []
                for i in range(60):  # six seconds at ten a second, each a new leader
                    sent = loop.time()
                    await send(_change(players[i % N], board, 3000 + i, version=100 + i))
                    frame = await _frame(normal, "top")
                    while frame["entries"][0]["score"] != 3000 + i:
                        frame = await _frame(normal, "top")
                    lags.append(loop.time() - sent)
                    await asyncio.sleep(max(0.0, sent + 0.1 - loop.time()))
            frames = parse_frames(await stuck.read_all(wait_s=10))
        finally:
            stuck.close()
    assert frames[-1][0] == 0x8
    assert decode_close(frames[-1][1]) == (CLOSE_TOO_SLOW, "too slow")
    tops = [json.loads(p) for op, p in frames if op == 0x1]
    assert "board" not in tops[0]  # the default frame on connect
    assert all(t["board"] == board for t in tops[1:])  # then only its subscription's
    assert len(tops) < 60  # skipped, not queued for
    assert max(lags) < 0.5, lags  # the reading subscriber never waited on it


async def test_a_season_window_goes_quiet_between_seasons_and_wakes_for_the_next(
    client: Client, pg_module: asyncpg.Connection
) -> None:
    subs = client.app[components_key].fanout.subscriptions
    assert subs is not None
    start = _today() + timedelta(days=1)
    first_end, second = start + timedelta(days=7), start + timedelta(days=10)
    board = f"z-{uuid.uuid4().hex[:12]}"
    seasons = (
        Season(id="s1", starts_at=start, ends_at=first_end),
        Season(id="s2", starts_at=second, ends_at=second + timedelta(days=7)),
    )
    definition = BoardDefinition(
        board_id=board, title="Seasons", windows=("season",), seasons=seasons
    )
    await save_definitions(pg_module, [definition])
    # The catalog is re-read for an unknown board at most once a second: read it now.
    await client.app[components_key].periods.catalog(max_age_s=0)
    try:
        subs.clock = lambda: first_end - timedelta(milliseconds=500)
        async with client.ws_connect("/ws/scoreboard") as ws:
            assert (await _subscribe(ws, board, "season"))["period"] == "s1"
            subs.clock = lambda: first_end + timedelta(hours=1)
            gap = await _frame(ws, "period")
            assert gap["closed"] == "s1"
            assert gap["current"] is None
            assert gap["next_reset"] is None
            subs.clock = lambda: second + timedelta(milliseconds=500)
            woke = await _frame(ws, "period")
            assert woke["closed"] is None
            assert woke["current"]["period"] == "s2"
            assert datetime.fromisoformat(woke["next_reset"]) == second + timedelta(days=7)
            top = await _frame(ws, "top")
            assert top["period"] == "s2"
            assert top["entries"] == []
    finally:
        subs.clock = lambda: datetime.now(UTC)
        await pg_module.execute("UPDATE boards SET retired = true WHERE board_id = $1", board)


@pytest.mark.redis_cluster
async def test_a_ban_takes_the_player_off_a_subscribed_period_live(
    client: Client, board_ids: list[str], pg_module: asyncpg.Connection
) -> None:
    async def moderate(user_id: uuid.UUID, *, banned: bool) -> None:
        async with pg_module.transaction():
            await pg_module.execute(
                "UPDATE users SET banned = $2 WHERE user_id = $1", user_id, banned
            )
            await moderation.record(pg_module, user_id, "banned" if banned else "unbanned")

    board = board_ids[0]

    async def truth() -> list[str]:
        """The period's top 10 in PostgreSQL, banned players left out (the rebuild's source;
        the changes this module sent straight to Kafka are not in it)."""
        rows = await pg_module.fetch(
            """SELECT b.user_id FROM board_scores b JOIN users u USING (user_id)
               WHERE b.board_id = $1 AND b.window_id = 'daily' AND b.period = $2
                 AND NOT u.banned
               ORDER BY b.score DESC, b.reached_at, b.user_id LIMIT 10""",
            board,
            _today().date().isoformat(),
        )
        return [str(r[0]) for r in rows]

    async with client.ws_connect("/ws/scoreboard") as ws:
        before = await _subscribe(ws, board, "daily")
        leader = uuid.UUID((await truth())[0])  # the leader in PostgreSQL
        await moderate(leader, banned=True)
        try:
            after = await _frame(ws, "top", wait_s=10.0)
            ids = [e["user_id"] for e in after["entries"]]
            assert str(leader) not in ids
            assert ids == await truth()  # the period was dropped and rebuilt without them
            assert after["version"] > before["version"]
        finally:
            await moderate(leader, banned=False)
        back = await _frame(ws, "top", wait_s=10.0)
        assert back["entries"][0]["user_id"] == str(leader)
        assert [e["user_id"] for e in back["entries"]] == await truth()
        assert back["version"] > after["version"]


@pytest.mark.redis_cluster
async def test_one_feed_serves_every_subscriber_the_same_bytes(
    client: Client, players: list[Player], board_ids: list[str], send: Send
) -> None:
    subs = client.app[components_key].fanout.subscriptions
    assert subs is not None
    board = board_ids[1]
    async with contextlib.AsyncExitStack() as stack:
        sockets = [
            await stack.enter_async_context(client.ws_connect("/ws/scoreboard")) for _ in range(20)
        ]
        for ws in sockets:
            await _subscribe(ws, board, "daily")
        assert len(subs) == 1  # one feed, whatever the subscribers
        registry = client.app[registry_key]
        assert registry.get_sample_value("scoreboard_broadcaster_ws_feeds") == 1
        assert registry.get_sample_value("scoreboard_broadcaster_ws_subscriptions") == 20
        await send(_change(players[5], board, 5000, version=300))
        texts = set()
        for ws in sockets:
            while True:
                msg = await ws.receive(timeout=5)
                if json.loads(msg.data)["entries"][0]["score"] == 5000:
                    texts.add(msg.data)
                    break
        assert len(texts) == 1  # one serialisation, the same frame to all
    await eventually(lambda: len(subs) == 0, wait_s=5)  # dropped with its last subscriber
    assert client.app[registry_key].get_sample_value("scoreboard_broadcaster_ws_feeds") == 0
