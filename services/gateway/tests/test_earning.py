"""The earning rules, one at a time, against the real gateway and Redis (gateway.earning).

The bound they add up to, under every trick at once, is tests/e2e/test_farming.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gateway.catalog import ActionSpec, Catalog
from gateway.components import components_key
from gateway.earning import EARNING_PROBLEM, Budget, EarningRules
from services.gateway.tests.support import UPDATE, Client, MakeGateway, Player, TokenMint

CATALOG: dict[str, dict[str, Any]] = {
    "quest": {"points": 50, "min_duration_ms": 0},
    "paced": {"points": 5, "min_duration_ms": 300},
    "twice": {"points": 5, "min_duration_ms": 0, "max_open": 2},
    "daily": {"points": 10, "min_duration_ms": 0, "per_day": 1},
    "hourly": {"points": 10, "min_duration_ms": 0, "per_hour": 2},
}


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Client:
    # A budget that only test_points_arrive_no_faster_than_the_budget_allows reaches.
    return await make_gateway(action_catalog=CATALOG, points_budget_per_minute=60_000)


@pytest.fixture
def player(gateway: Client, mint: TokenMint) -> Player:
    return Player(gateway, mint)


async def _refused(player: Player, action_type: str) -> tuple[str, int]:
    resp = await player.client.post(
        "/api/actions", json={"action_type": action_type}, headers=player.auth
    )
    assert resp.status == 429, await resp.text()
    problem = await resp.json(content_type=None)
    assert problem["type"] == EARNING_PROBLEM
    return problem["earning_rule"], int(resp.headers["Retry-After"])


async def test_one_more_open_ticket_replaces_the_oldest(player: Player) -> None:
    first = await player.completion("quest")
    second = await player.completion("quest")  # never refused: the first is abandoned
    status, problem = await player.submit(first)
    assert (status, problem["detail"]) == (400, "unknown or expired action_id")
    assert (await player.submit(second))[0] == 202
    # With max_open 2, two tickets of a type stay open side by side; a third replaces the first.
    a, b, c = [await player.completion("twice") for _ in range(3)]
    assert [(await player.submit(t))[0] for t in (b, c, a)] == [202, 202, 400]


async def test_tickets_of_a_type_are_issued_no_faster_than_its_minimum_duration(
    player: Player,
) -> None:
    body = await player.completion("paced")
    assert await _refused(player, "paced") == ("ticket_pace", 1)
    await asyncio.sleep(0.35)
    assert (await player.submit(body))[0] == 202
    await player.completion("paced")  # the next one is due now


async def test_period_caps_hold_per_utc_day_and_hour(player: Player) -> None:
    assert (await player.submit(await player.completion("daily")))[0] == 202
    rule, retry_after = await _refused(player, "daily")
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert rule == "period_cap_day"
    assert abs(retry_after - (midnight - now).total_seconds()) <= 2
    # Two an hour: two tickets open together can still only complete twice.
    tickets = [await player.completion("hourly")]  # max_open 1: one at a time
    assert (await player.submit(tickets.pop()))[0] == 202
    tickets.append(await player.completion("hourly"))
    assert [(await player.submit(t))[0] for t in tickets] == [202]
    assert (await _refused(player, "hourly"))[0] == "period_cap_hour"


async def test_a_capped_completion_is_refused_at_redemption_too(
    make_gateway: MakeGateway, mint: TokenMint
) -> None:
    """Tickets opened side by side before the cap was reached cannot exceed it."""
    client = await make_gateway(
        action_catalog={
            "hourly": {"points": 10, "min_duration_ms": 0, "per_hour": 2, "max_open": 3}
        }
    )
    player = Player(client, mint)
    tickets = [await player.completion("hourly") for _ in range(3)]
    assert [(await player.submit(t))[0] for t in tickets[:2]] == [202, 202]
    resp = await client.post(UPDATE, json=tickets[2], headers=player.auth)
    assert resp.status == 429
    assert (await resp.json(content_type=None))["earning_rule"] == "period_cap_hour"


async def test_points_arrive_no_faster_than_the_budget_allows(
    make_gateway: MakeGateway, mint: TokenMint
) -> None:
    client = await make_gateway(
        action_catalog={"quest": {"points": 50, "min_duration_ms": 0, "max_open": 5}},
        points_budget_per_minute=600,  # 10 points a second, one quest (50) of slack
    )
    player = Player(client, mint)
    tickets = [await player.completion("quest") for _ in range(3)]
    assert (await player.submit(tickets[0]))[0] == 202
    resp = await client.post(UPDATE, json=tickets[1], headers=player.auth)
    assert resp.status == 429
    problem = await resp.json(content_type=None)
    assert (problem["type"], problem["earning_rule"]) == (EARNING_PROBLEM, "points_budget")
    assert 4 <= int(resp.headers["Retry-After"]) <= 6  # 50 points at 10 a second
    # Refused requests use up nothing: the ticket is still good once the budget allows it.
    started = time.monotonic()
    while (await player.submit(tickets[1]))[0] == 429:  # noqa: ASYNC110 - polling the gateway
        await asyncio.sleep(0.25)
    assert 4 <= time.monotonic() - started <= 7


async def test_a_claim_released_by_a_kafka_failure_gives_its_charge_back(
    make_gateway: MakeGateway, mint: TokenMint, unused_tcp_port: int
) -> None:
    working = await make_gateway(action_catalog=CATALOG)
    redis_prefix = working.app[components_key].settings.redis_prefix
    broken = await make_gateway(
        wait_kafka=False,
        action_catalog=CATALOG,
        redis_prefix=redis_prefix,
        kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}",
    )
    player = Player(broken, mint)
    body = await player.completion("daily")
    assert (await player.submit(body))[0] == 503
    # The day's one completion was not used up: the same request succeeds once Kafka takes it.
    resp = await working.post(UPDATE, json=body, headers=player.auth)
    assert resp.status == 202


def test_the_default_budget_is_the_best_type_done_back_to_back() -> None:
    catalog = {
        "quest": ActionSpec(points=50, min_duration_ms=2000),
        "puzzle": ActionSpec(points=20, min_duration_ms=1000),
        "daily_login": ActionSpec(points=10, min_duration_ms=0, per_day=1),
        "tap": ActionSpec(points=1, min_duration_ms=100),
    }
    budget = Budget.for_catalog(catalog, updates_per_s=10, per_minute=None)
    assert (budget.per_minute, budget.burst_points) == (25 * 60, 50)  # quest: 25 points/s
    instant = {"jump": ActionSpec(points=3, min_duration_ms=0)}
    assert Budget.for_catalog(instant, updates_per_s=10, per_minute=None).per_minute == 1800


def test_the_counters_keys_and_lifetimes_follow_the_utc_hour_and_day_of_each_time() -> None:
    spec = ActionSpec(points=10, min_duration_ms=0, per_hour=2)
    rules = EarningRules("p:", Catalog({"hourly": spec}), Budget(per_minute=60, burst_points=10))
    user = uuid.UUID(int=1)

    def periods(now: datetime) -> tuple[str, str, int, int]:
        keys, args = rules.redeem_input(user, "hourly", spec, now)
        return keys[1], keys[2], int(args[5]), int(args[6])

    margin_ms = 5 * 60 * 1000
    late = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    after = late + timedelta(seconds=1)
    earlier = late - timedelta(hours=5)  # a refund of an older claim, asked after the others
    for now, hour, day, to_hour_end, to_day_end in [
        (late, "2026123123", "20261231", 1_000, 1_000),
        (after, "2027010100", "20270101", 3_600_000, 86_400_000),
        (earlier, "2026123118", "20261231", 1_000, 1_000 + 5 * 3_600_000),
        (after, "2027010100", "20270101", 3_600_000, 86_400_000),
    ]:
        assert periods(now) == (
            f"p:earn:{user}:hourly:h:{hour}",
            f"p:earn:{user}:hourly:d:{day}",
            to_hour_end + margin_ms,
            to_day_end + margin_ms,
        )
