"""The boards page in headless Chromium: a board and window switcher fed by GET /api/boards, the
live top of the chosen window over a WebSocket subscription (switching drops the old one), the
signed-in player's rank with the players around them as others overtake, the countdown to the
next reset, and a closed period's final standings read from PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from playwright.async_api import (
    Browser,
    Page,
    WebSocket,
    WebSocketRoute,
    async_playwright,
    expect,
)

from common.boards import BoardDefinition, Season, save_definitions
from testkit.env import TestEnv
from tests.e2e.harness import Player, System, complete_action, register_and_login
from tests.e2e.test_browser import ARTIFACTS, CHROMIUM

PASSWORD = "correct horse battery"


@pytest.fixture(autouse=True)
async def _clear_of_midnight() -> None:
    """Each test reads "today" once (and this week, this month); one that ran across UTC
    midnight would check the page against the day before. So none starts in the last two
    minutes of a UTC day: it waits for the next one."""
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), time(), UTC)
    left = (midnight - now).total_seconds()
    if left < 120:
        await asyncio.sleep(left + 1)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium, started as test_browser.py starts it."""
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )  # fmt: skip
        yield browser
        await browser.close()


@dataclass
class Boards:
    """Two boards of this test: ``main`` (every action; all-time, daily, weekly, monthly) and
    ``taps`` (only taps; daily), with their titles."""

    main: str
    main_title: str
    taps: str
    taps_title: str


@pytest.fixture
async def pg(e2e_env: TestEnv) -> AsyncIterator[asyncpg.Connection]:
    """The run's database as its owner (as an operator's tooling would)."""
    conn = await asyncpg.connect(e2e_env.postgres_dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def boards(pg: asyncpg.Connection) -> AsyncIterator[Boards]:
    """Define the two boards; retire them afterwards (other tests list GET /api/boards too)."""
    tag = uuid.uuid4().hex[:8]
    made = Boards(f"page-{tag}", "Arena", f"taps-{tag}", "Tap sprint")
    definitions = [
        BoardDefinition(
            board_id=made.main,
            title=made.main_title,
            windows=("all-time", "daily", "weekly", "monthly"),
        ),
        BoardDefinition(
            board_id=made.taps, title=made.taps_title, action_types=("tap",), windows=("daily",)
        ),
    ]
    await save_definitions(pg, definitions)
    yield made
    await pg.execute(
        "UPDATE boards SET retired = true WHERE board_id = ANY($1)", [made.main, made.taps]
    )


def _week_id(day: date) -> str:
    iso = day.isocalendar()
    return f"{iso.year}-W{iso.week:02d}"


async def _put_scores(
    pg: asyncpg.Connection, board: str, window: str, period: str, scores: list[tuple[Player, int]]
) -> None:
    """Totals in ``board_scores`` as the score service writes them (PostgreSQL is the truth)."""
    reached = datetime.now(UTC) - timedelta(days=3)
    rows = [
        (board, window, period, uuid.UUID(p.user_id), score, 1, 1, reached + timedelta(seconds=i))
        for i, (p, score) in enumerate(scores)
    ]
    await pg.executemany(
        "INSERT INTO board_scores (board_id, window_id, period, user_id, score, entries,"
        " version, reached_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        rows,
    )


async def _listed(http: aiohttp.ClientSession, gateway: str, *board_ids: str) -> None:
    """Wait until GET /api/boards lists the boards (the broadcaster reads its catalog every 5 s)."""
    async with asyncio.timeout(15):
        while True:
            async with http.get(f"{gateway}/api/boards") as resp:
                assert resp.status == 200, await resp.text()
                listed = {b["board"] for b in (await resp.json())["boards"]}
            if set(board_ids) <= listed:
                return
            await asyncio.sleep(0.25)


def _seconds(countdown: str) -> int:
    """ "3 d 04:05:06" or "04:05:06" as seconds."""
    match = re.fullmatch(r"(?:(\d+) d )?(\d\d):(\d\d):(\d\d)", countdown.strip())
    assert match, f"not a countdown: {countdown!r}"
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _rows(page: Page, table: str = "#board") -> Any:
    return page.locator(f"{table} tr[data-user-id]")


async def _expect_top(page: Page, expected: list[tuple[str, int]]) -> None:
    """The board card shows exactly these (name, score) rows, ranked 1, 2, ..."""
    rows = _rows(page)
    await expect(rows).to_have_count(len(expected), timeout=10_000)
    await expect(rows.locator(".name")).to_have_text([name for name, _ in expected])
    await expect(rows.locator(".score")).to_have_text([f"{score:,}" for _, score in expected])
    await expect(rows.locator(".rank__badge")).to_have_text(
        [str(rank) for rank in range(1, len(expected) + 1)]
    )


def _record_requests(page: Page) -> list[dict[str, Any]]:
    """Every JSON request the page sends on its scoreboard WebSockets, in order."""
    sent: list[dict[str, Any]] = []

    def on_socket(ws: WebSocket) -> None:
        def on_sent(payload: str | bytes) -> None:
            sent.append(json.loads(payload))

        ws.on("framesent", on_sent)

    page.on("websocket", on_socket)
    return sent


async def test_boards_page_switches_ranks_counts_down_and_shows_closed_periods(
    system: System,
    http: aiohttp.ClientSession,
    pg: asyncpg.Connection,
    boards: Boards,
    browser: Browser,
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    gw = system.gateway
    alice, bob, carol, dave = [
        await register_and_login(http, gw, f"{who}{uuid.uuid4().hex[:8]}", PASSWORD)
        for who in ("al", "bo", "ca", "da")
    ]
    today = datetime.now(UTC).date()
    closed_day = (today - timedelta(days=3)).isoformat()  # older than Redis keeps: PostgreSQL
    # A closed day's final standings, and dave's points from earlier this week (both written
    # before anything reaches the board, as the score service would have).
    await _put_scores(pg, boards.main, "daily", closed_day, [(bob, 120), (alice, 70), (carol, 30)])
    if today.weekday() > 0:  # on a Monday, "earlier this week" is today: nothing to add
        await _put_scores(pg, boards.main, "weekly", _week_id(today), [(dave, 500)])
    await _listed(http, gw, boards.main, boards.taps)

    page = await browser.new_page(viewport={"width": 1200, "height": 1000})
    sent = _record_requests(page)
    await page.goto(gw + "/")
    await expect(page.locator("#status")).to_contain_text("live", ignore_case=True)
    login = page.locator("#login-form")
    await login.locator("input[name=username]").fill(alice.username)
    await login.locator("input[name=password]").fill(PASSWORD)
    await login.locator("button[type=submit]").click()
    await expect(page.locator("#logout")).to_be_visible(timeout=10_000)

    # The switchers come from GET /api/boards: each board's own windows only.
    await page.locator("#board-select").select_option(boards.main)
    windows = page.locator("#window-switch label")
    await expect(windows).to_have_text(["All-time", "Daily", "Weekly", "Monthly"])
    await page.get_by_role("radio", name="Daily").check()
    await expect(page.locator("#period-label")).to_have_text(
        f"{boards.main_title} · Daily · {today.isoformat()}"
    )
    await expect(page.locator("#board-note")).to_contain_text("No scores yet in this period")
    await expect(page.locator("#around-summary")).to_contain_text("Not on this board yet")

    # Alice scores from the page: she is first of one, live.
    await page.locator('#actions [data-action-type="quest"]').click()
    await expect(page.locator("#result")).to_contain_text("50", timeout=15_000)
    await _expect_top(page, [(alice.username, 50)])
    summary = page.locator("#around-summary")
    await expect(summary).to_have_text("Rank 1 of 1 · top 100 %")

    # Bob overtakes her: her rank and neighbours change without a reload.
    for action in ("quest", "tap"):
        status, body = await complete_action(http, gw, bob, action, wait_s=10)
        assert status == 200, body
    await _expect_top(page, [(bob.username, 51), (alice.username, 50)])
    await expect(summary).to_have_text("Rank 2 of 2 · top 100 %")
    around = _rows(page, "#around-list")
    await expect(around.locator(".name")).to_have_text([bob.username, alice.username])
    await expect(page.locator("#around-list tr.is-me .name")).to_have_text(alice.username)

    # The countdown shows the time to the next UTC midnight and ticks down.
    countdown = page.locator("#countdown")
    first = _seconds(await countdown.inner_text())
    midnight = datetime(today.year, today.month, today.day, tzinfo=UTC) + timedelta(days=1)
    assert abs(first - (midnight - datetime.now(UTC)).total_seconds()) < 5
    await page.wait_for_timeout(2_200)
    assert 1 <= first - _seconds(await countdown.inner_text()) <= 4

    # Another window of the same board: its own period, top and reset.
    await page.get_by_role("radio", name="Weekly").check()
    await expect(page.locator("#period-label")).to_contain_text(f"Weekly · {_week_id(today)}")
    weekly = [(bob.username, 51), (alice.username, 50)]
    if today.weekday() > 0:
        weekly.insert(0, (dave.username, 500))
    await _expect_top(page, weekly)
    await expect(countdown).to_contain_text(" d " if today.weekday() < 6 else ":")
    assert {"type": "unsubscribe", "board": boards.main, "window": "daily"} in sent
    assert sent[-1] == {"type": "subscribe", "board": boards.main, "window": "weekly", "around": 3}

    # The keyboard moves through the windows, and keeps its place while the page follows.
    await page.keyboard.press("ArrowRight")
    await expect(page.locator("#period-label")).to_contain_text(f"Monthly · {today:%Y-%m}")
    await expect(page.get_by_role("radio", name="Monthly")).to_be_focused()
    await _expect_top(page, weekly[-2:])

    # Another board: only its windows, only the actions that feed it.
    for _ in range(3):
        status, body = await complete_action(http, gw, carol, "tap", wait_s=10)
        assert status == 200, body
    await page.locator("#board-select").select_option(boards.taps)
    await expect(windows).to_have_text(["Daily"])
    await _expect_top(page, [(carol.username, 3), (bob.username, 1)])
    await expect(summary).to_contain_text("Not on this board yet")
    assert sent[-2:] == [
        {"type": "unsubscribe", "board": boards.main, "window": "monthly"},
        {"type": "subscribe", "board": boards.taps, "window": "daily", "around": 3},
    ]

    # A closed period: read-only final standings, clearly marked, and back to live.
    await page.locator("#board-select").select_option(boards.main)
    await page.get_by_role("radio", name="Daily").check()
    await _expect_top(page, [(bob.username, 51), (alice.username, 50), (carol.username, 3)])
    await page.locator("#period-select").select_option(closed_day)
    banner = page.locator("#archive-banner")
    await expect(banner).to_be_visible()
    await expect(banner).to_contain_text(f"Final standings of {closed_day}")
    await expect(page.locator("#board-heading")).to_have_text("Final standings")
    await expect(page.locator("#reset")).to_be_hidden()
    await _expect_top(page, [(bob.username, 120), (alice.username, 70), (carol.username, 30)])
    await expect(summary).to_have_text("Final rank 2 of 3 · top 66.67 %")
    await page.screenshot(path=str(ARTIFACTS / "boards-page-closed.png"), full_page=True)

    # Live changes meanwhile do not touch the closed period; back to live shows them.
    status, body = await complete_action(http, gw, carol, "quest", wait_s=10)
    assert status == 200, body
    await page.wait_for_timeout(500)
    await _expect_top(page, [(bob.username, 120), (alice.username, 70), (carol.username, 30)])
    await page.get_by_role("button", name="Back to live").click()
    await expect(banner).to_be_hidden()
    await _expect_top(page, [(carol.username, 53), (bob.username, 51), (alice.username, 50)])
    await expect(summary).to_have_text("Rank 3 of 3 · top 100 %")
    await expect(countdown).to_be_visible()
    await page.evaluate("document.activeElement.blur()")  # no focus ring in the picture
    await page.screenshot(path=str(ARTIFACTS / "boards-page.png"), full_page=True)
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await page.screenshot(path=str(ARTIFACTS / "boards-page-phone.png"), full_page=True)
    await page.close()


async def test_a_rollover_frame_moves_the_page_to_the_new_period(
    system: System, boards: Boards, http: aiohttp.ClientSession, browser: Browser
) -> None:
    """The reset itself is the broadcaster's (services/broadcaster/tests/test_subscriptions.py,
    with an injected clock); here the real socket is relayed and a ``period`` frame of the
    documented shape is added to it, to see the page follow it: the new period, the next reset,
    the period that just closed offered among the past ones, and an announcement."""
    await _listed(http, system.gateway, boards.main)
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    relayed: list[WebSocketRoute] = []
    daily = (boards.main, "daily")
    snapshot = asyncio.Event()  # the daily subscription's first top frame reached the page

    def relay(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def to_page(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame["type"] == "top" and (frame.get("board"), frame.get("window")) == daily:
                snapshot.set()
            ws.send(message)

        server.on_message(to_page)
        ws.on_message(server.send)
        relayed.append(ws)

    await page.route_web_socket(re.compile(r"/ws/scoreboard$"), relay)
    await page.goto(system.gateway + "/")
    await expect(page.locator("#status")).to_contain_text("live", ignore_case=True)
    await page.locator("#board-select").select_option(boards.main)
    await page.get_by_role("radio", name="Daily").check()
    today = datetime.now(UTC).date()
    label = page.locator("#period-label")
    await expect(label).to_have_text(f"{boards.main_title} · Daily · {today.isoformat()}")
    countdown = page.locator("#countdown")
    assert _seconds(await countdown.inner_text()) < 86_400

    tomorrow = today + timedelta(days=1)
    starts = datetime(tomorrow.year, tomorrow.month, tomorrow.day, tzinfo=UTC)
    ends = starts + timedelta(days=1)
    period = {"period": tomorrow.isoformat(), "starts_at": starts.isoformat(),
              "ends_at": ends.isoformat()}  # fmt: skip
    frame = {
        "type": "period",
        "board": boards.main,
        "window": "daily",
        "closed": today.isoformat(),
        "current": period,
        "next_reset": ends.isoformat(),
    }
    # After the subscription's snapshot, as the server would send it.
    await asyncio.wait_for(snapshot.wait(), timeout=10)
    assert len(relayed) == 1
    relayed[0].send(json.dumps(frame))

    await expect(label).to_have_text(f"{boards.main_title} · Daily · {tomorrow.isoformat()}")
    left = _seconds(await countdown.inner_text())
    assert abs(left - (ends - datetime.now(UTC)).total_seconds()) < 5
    assert left > 86_400
    await expect(page.locator("#announcer")).to_contain_text(f"period {today.isoformat()} closed")
    closed = page.locator(f'#period-select option[value="{today.isoformat()}"]')
    await expect(closed).to_have_text(f"{today.isoformat()} (closed)")
    await page.close()


async def test_without_the_websocket_the_chosen_window_is_read_over_http(
    system: System, boards: Boards, http: aiohttp.ClientSession, browser: Browser
) -> None:
    """A proxy that refuses WebSockets: the page says it is reconnecting and still shows the
    chosen window's top from GET /api/boards/{board}/{window}/top."""
    gw = system.gateway
    player = await register_and_login(http, gw, f"of{uuid.uuid4().hex[:8]}", PASSWORD)
    status, body = await complete_action(http, gw, player, "tap", wait_s=10)
    assert status == 200, body
    await _listed(http, gw, boards.taps)
    page = await browser.new_page(viewport={"width": 1200, "height": 900})

    async def refuse(ws: WebSocketRoute) -> None:
        await ws.close(code=1011, reason="no WebSockets here")

    await page.route_web_socket(re.compile(r"/ws/scoreboard$"), refuse)
    await page.goto(gw + "/")
    await expect(page.locator("#status")).to_contain_text("Reconnecting", timeout=10_000)
    await page.locator("#board-select").select_option(boards.taps)
    await _expect_top(page, [(player.username, 1)])
    table = page.locator("table:has(#board)")
    await expect(table).to_have_class(re.compile(r"\bis-stale\b"))  # shown, not live
    await page.close()


async def test_a_closed_period_pages_through_its_final_standings(
    system: System,
    boards: Boards,
    http: aiohttp.ClientSession,
    pg: asyncpg.Connection,
    browser: Browser,
) -> None:
    """Twelve players in last week's final standings: two pages, following the API's cursor."""
    players = [(uuid.uuid4(), f"wk{i:02d}{uuid.uuid4().hex[:6]}") for i in range(12)]
    await pg.executemany(
        "INSERT INTO users (user_id, username, password_hash) VALUES ($1, $2, 'x')", players
    )
    last_week = _week_id(datetime.now(UTC).date() - timedelta(days=7))
    # They never sign in: no tokens, only their rows.
    standings = [Player(str(user_id), name, "", "", "") for user_id, name in players]
    await _put_scores(
        pg, boards.main, "weekly", last_week, [(p, 1000 - 10 * i) for i, p in enumerate(standings)]
    )
    await _listed(http, system.gateway, boards.main)
    page = await browser.new_page(viewport={"width": 1200, "height": 900})
    await page.goto(system.gateway + "/")
    await page.locator("#board-select").select_option(boards.main)
    await page.get_by_role("radio", name="Weekly").check()
    await page.locator("#period-select").select_option(last_week)

    expected = [(p.username, 1000 - 10 * i) for i, p in enumerate(standings)]
    await _expect_top(page, expected[:10])
    info, previous, following = (
        page.locator(selector) for selector in ("#page-info", "#page-prev", "#page-next")
    )
    await expect(info).to_have_text("1\N{EN DASH}10 of 12")
    await expect(previous).to_be_disabled()
    await following.click()
    rows = _rows(page)
    await expect(rows.locator(".name")).to_have_text([name for name, _ in expected[10:]])
    await expect(rows.locator(".rank__badge")).to_have_text(["11", "12"])
    await expect(info).to_have_text("11\N{EN DASH}12 of 12")
    await expect(following).to_be_disabled()
    await previous.click()
    await _expect_top(page, expected[:10])
    # The address keeps the view: a reload (or the link) opens the same closed period.
    await page.reload()
    await expect(page.locator("#archive-banner")).to_contain_text(f"Final standings of {last_week}")
    await _expect_top(page, expected[:10])
    await page.close()


async def test_season_windows_count_down_to_the_season_end_or_the_next_start(
    system: System, http: aiohttp.ClientSession, pg: asyncpg.Connection, browser: Browser
) -> None:
    """A season window: its live season counts down to its end and the seasons that ended are
    the past periods; between seasons the page says so and counts down to the next start. Both
    opened from a link (the view lives in the address's fragment)."""
    tag = uuid.uuid4().hex[:8]
    now = datetime.now(UTC).replace(microsecond=0)

    def season(season_id: str, starts_in_days: int, ends_in_days: int) -> Season:
        starts, ends = (now + timedelta(days=d) for d in (starts_in_days, ends_in_days))
        return Season(id=season_id, starts_at=starts, ends_at=ends)

    running, waiting = f"season-{tag}", f"later-{tag}"
    definitions = [
        BoardDefinition(
            board_id=running,
            title="Seasons",
            windows=("season",),
            seasons=(season("s1", -10, -3), season("s2", -3, 5)),
        ),
        BoardDefinition(
            board_id=waiting,
            title="Later",
            windows=("season",),
            seasons=(season("next", 2, 9),),
        ),
    ]
    await save_definitions(pg, definitions)
    try:
        player = await register_and_login(http, system.gateway, f"se{tag}", PASSWORD)
        await _put_scores(pg, running, "season", "s1", [(player, 77)])
        await _listed(http, system.gateway, running, waiting)
        page = await browser.new_page(viewport={"width": 1200, "height": 900})

        await page.goto(f"{system.gateway}/#board={running}&window=season")
        await expect(page.locator("#window-switch label")).to_have_text(["Season"])
        await expect(page.locator("#period-label")).to_have_text("Seasons · Season · s2")
        await expect(page.locator("#reset-label")).to_have_text("Next reset in")
        left = _seconds(await page.locator("#countdown").inner_text())
        assert abs(left - timedelta(days=5).total_seconds()) < 30
        await page.locator("#period-select").select_option("s1")
        await _expect_top(page, [(player.username, 77)])
        assert page.url.endswith(f"#board={running}&window=season&period=s1")
        await page.close()

        page = await browser.new_page(viewport={"width": 1200, "height": 900})
        await page.goto(f"{system.gateway}/#board={waiting}&window=season")
        await expect(page.locator("#board-note")).to_have_text("No season is running right now.")
        await expect(page.locator("#reset-label")).to_have_text("Next season in")
        left = _seconds(await page.locator("#countdown").inner_text())
        assert abs(left - timedelta(days=2).total_seconds()) < 30
        await page.close()
    finally:
        await pg.execute(
            "UPDATE boards SET retired = true WHERE board_id = ANY($1)", [running, waiting]
        )
