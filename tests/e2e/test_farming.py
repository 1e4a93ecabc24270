"""A farmer with every trick earns no more than one honest player could (gateway.earning).

Two gateway processes on one port (the kernel spreads the connections), the default catalog
(quest 50 points per 2 s is the best type: 25 points/s; daily_login once a day), default limits.
The farmer runs, for T seconds, on three login sessions of one account at once: tickets of every
type opened 20 at a time and redeemed in batches, the types mixed in parallel, every completion
replayed, instant types hammered. The bound is what one honest player can earn in T seconds: the
best type's rate times T, one action of slack (the first completion), plus the period caps. Before
the earning rules, the same tricks earned 7.2 times the bound; the test prints the ratio.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway.catalog import DEFAULT_CATALOG
from testkit.env import Infra, TestEnv, create_test_env, drop_test_env
from tests.e2e.harness import Player, register_and_login, start_system

pytestmark = pytest.mark.integration

FARM_SECONDS = 12.0
BEST_RATE = max(  # points per second of the best uncapped type done back to back
    s.points / (s.min_duration_ms / 1000)
    for s in DEFAULT_CATALOG.values()
    if getattr(s, "per_day", None) is None and s.min_duration_ms
)
SLACK = max(s.points for s in DEFAULT_CATALOG.values())
CAPS = sum(s.points * (getattr(s, "per_day", None) or 0) for s in DEFAULT_CATALOG.values())
# A farmer has many addresses: only the per-user limits and the earning rules may hold them back.
UNLIMITED_ADDRESSES = {
    f"SCOREBOARD_{kind}_{what}_PER_ADDRESS": "1000000"
    for kind in ("UPDATE", "ACTIONS", "AUTH", "REGISTER")
    for what in ("RATE", "BURST")
}


@pytest.fixture
async def env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A slice of its own."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


async def _post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], auth: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body, headers=auth) as resp:
        return resp.status, await resp.json(content_type=None)


class Farm:
    """The farmer's tricks, all at once, on several sessions of one account."""

    def __init__(self, http: aiohttp.ClientSession, gateway: str, sessions: list[Player]) -> None:
        self.http = http
        self.gateway = gateway
        self.sessions = sessions
        self.answers: Counter[str] = Counter()
        self.done: list[dict[str, Any]] = []

    async def ticket(self, session: Player, action_type: str) -> dict[str, Any] | None:
        status, body = await _post(
            self.http, f"{self.gateway}/api/actions", {"action_type": action_type}, session.auth
        )
        self.answers[f"ticket {status} {body.get('earning_rule', '')}".strip()] += 1
        return body if status == 201 else None

    async def submit(self, session: Player, ticket: dict[str, Any]) -> None:
        body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
        status, answer = await _post(
            self.http, f"{self.gateway}/api/scoreboard/update", body, session.auth
        )
        self.answers[f"update {status} {answer.get('earning_rule', '')}".strip()] += 1
        if status == 202:
            self.done.append(body)

    async def batches(self, session: Player, until: float) -> None:
        """20 tickets of every type at once, wait the longest minimum duration, redeem all."""
        longest = max(s.min_duration_ms for s in DEFAULT_CATALOG.values()) / 1000
        while time.monotonic() < until:
            opened = await asyncio.gather(
                *(self.ticket(session, t) for t in DEFAULT_CATALOG for _ in range(20))
            )
            await asyncio.sleep(longest + 0.05)
            await asyncio.gather(*(self.submit(session, t) for t in opened if t is not None))

    async def mixed(self, session: Player, action_type: str, until: float) -> None:
        """One type back to back, in parallel with every other type."""
        wait = DEFAULT_CATALOG[action_type].min_duration_ms / 1000 + 0.02
        while time.monotonic() < until:
            ticket = await self.ticket(session, action_type)
            if ticket is None:
                await asyncio.sleep(0.05)
                continue
            await asyncio.sleep(wait)
            await self.submit(session, ticket)

    async def replays(self, session: Player, until: float) -> None:
        """Every completion that was accepted, again."""
        while time.monotonic() < until:
            for body in list(self.done[-20:]):
                await self.submit(session, body)
            await asyncio.sleep(0.2)

    async def run(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        work = []
        for session in self.sessions:
            work.append(self.batches(session, until))
            work.extend(self.mixed(session, t, until) for t in DEFAULT_CATALOG)
            work.append(self.replays(session, until))
        await asyncio.gather(*work)


async def _honest(http: aiohttp.ClientSession, gateway: str, player: Player, until: float) -> int:
    """Quests back to back, as fast as the catalog allows; how many were accepted."""
    accepted = 0
    wait = DEFAULT_CATALOG["quest"].min_duration_ms / 1000 + 0.05
    while time.monotonic() < until:
        status, ticket = await _post(
            http, f"{gateway}/api/actions", {"action_type": "quest"}, player.auth
        )
        assert status == 201, ticket
        await asyncio.sleep(wait)
        body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
        status, answer = await _post(http, f"{gateway}/api/scoreboard/update", body, player.auth)
        assert status == 202, answer  # the rules never refuse honest play
        accepted += 1
    return accepted


async def _score(env: TestEnv, user_id: str, at_least: int) -> int:
    conn = await asyncpg.connect(env.postgres_dsn)
    try:
        async with asyncio.timeout(30):
            while True:
                score = await conn.fetchval(
                    "SELECT score FROM scores WHERE user_id = $1", uuid.UUID(user_id)
                )
                if (score or 0) >= at_least:
                    await asyncio.sleep(1.0)  # anything still on its way lands too
                    return int(
                        await conn.fetchval(
                            "SELECT score FROM scores WHERE user_id = $1", uuid.UUID(user_id)
                        )
                    )
                await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def test_farming_earns_no_more_than_an_honest_player_could(env: TestEnv) -> None:
    system = start_system(env, UNLIMITED_ADDRESSES, gateways=2)
    try:
        gateway = system.gateway
        # A connection per request, so both gateway processes serve the farmer.
        connector = aiohttp.TCPConnector(force_close=True, limit=200)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            name = f"farmer{uuid.uuid4().hex[:8]}"
            sessions = [await register_and_login(http, gateway, name)]
            for _ in range(2):  # more login sessions of the same account
                async with http.post(
                    f"{gateway}/api/auth/login",
                    json={"username": name, "password": sessions[0].password},
                ) as resp:
                    tokens = await resp.json()
                sessions.append(
                    Player(
                        sessions[0].user_id,
                        name,
                        sessions[0].password,
                        tokens["access_token"],
                        tokens["refresh_token"],
                    )
                )
            honest = await register_and_login(http, gateway, f"honest{uuid.uuid4().hex[:8]}")
            farm = Farm(http, gateway, sessions)
            started = time.monotonic()
            _, quests = await asyncio.gather(
                farm.run(FARM_SECONDS), _honest(http, gateway, honest, started + FARM_SECONDS)
            )
            elapsed = time.monotonic() - started
        farmed = await _score(env, sessions[0].user_id, 1)
        honest_score = await _score(env, honest.user_id, quests * 50)
    finally:
        system.stop()

    bound = BEST_RATE * elapsed + SLACK + CAPS
    print(
        f"\nfarming for {elapsed:.1f} s: {farmed} points, bound {bound:.0f} "
        f"(ratio {farmed / bound:.2f}); honest quests: {honest_score} points; "
        f"answers: {dict(farm.answers)}"
    )
    assert farmed <= bound, (farmed, bound, dict(farm.answers))
    assert honest_score == quests * 50
    assert quests >= int(FARM_SECONDS / 2.1)  # honest play at full pace went through
