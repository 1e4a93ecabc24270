"""Dependencies come back without errors: after Redis, PostgreSQL or Kafka restarts, no request
fails because of a connection that died with the server.

On a private PostgreSQL, Redis and Kafka (testkit.stack: this test kills them, never the shared
ones), the whole system serves traffic; then each server in turn is killed (Redis SIGKILL,
PostgreSQL ``stop -m immediate``, Kafka SIGKILL) and started again, and once it answers, the
first 100 requests of every kind must succeed: login, ticket, update, board read and WebSocket
connect. Measured before the Redis clients retried on a fresh connection: the first login
through auth after a Redis restart answered 503.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import pytest

from testkit.env import TestEnv, create_test_env
from testkit.stack import ROOT, Stack
from tests.e2e.harness import Player, System, register_and_login, start_system

pytestmark = pytest.mark.integration

REQUESTS = 100
CATALOG = {"tap": {"points": 1, "min_duration_ms": 0, "max_open": 1000}}
UNLIMITED = {
    f"SCOREBOARD_{kind}_{what}_PER_{whom}": "1000000"
    for kind in ("UPDATE", "ACTIONS", "AUTH", "REGISTER", "WS_CONNECT")
    for what in ("RATE", "BURST")
    for whom in ("USER", "ADDRESS")
}


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # Under .local/ (not /tmp, whose private directories the postgres user cannot enter).
    root = ROOT / ".local" / "restarts" / uuid.uuid4().hex[:8]
    stack = Stack(root)
    try:
        stack.start()
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def system(stack: Stack) -> AsyncIterator[tuple[System, TestEnv]]:
    env = await create_test_env(stack.infra)
    system = start_system(
        env,
        {
            **UNLIMITED,
            "SCOREBOARD_ACTION_CATALOG": json.dumps(CATALOG),
            "SCOREBOARD_WS_MAX_PER_ADDRESS": "10000",
        },
    )
    try:
        yield system, env
    finally:
        system.stop()


async def _kinds(
    http: aiohttp.ClientSession, gateway: str, player: Player
) -> dict[str, Callable[[], Awaitable[int]]]:
    async def login() -> int:
        body = {"username": player.username, "password": player.password}
        async with http.post(f"{gateway}/api/auth/login", json=body) as resp:
            return resp.status

    async def ticket() -> int:
        async with http.post(
            f"{gateway}/api/actions", json={"action_type": "tap"}, headers=player.auth
        ) as resp:
            return resp.status

    async def update() -> int:
        async with http.post(
            f"{gateway}/api/actions", json={"action_type": "tap"}, headers=player.auth
        ) as resp:
            if resp.status != 201:
                return resp.status
            issued = await resp.json()
        body = {k: issued[k] for k in ("action_id", "action_type", "action_hash")}
        async with http.post(
            f"{gateway}/api/scoreboard/update", json=body, headers=player.auth
        ) as resp:
            return resp.status

    async def read() -> int:
        async with http.get(f"{gateway}/api/scoreboard/top?limit=10") as resp:
            return resp.status

    async def websocket() -> int:
        try:
            async with http.ws_connect(f"{gateway}/ws/scoreboard") as ws:
                msg = await asyncio.wait_for(ws.receive(), 10)
                return 101 if msg.type is aiohttp.WSMsgType.TEXT else 0
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status

    return {
        "login": login,
        "ticket": ticket,
        "update": update,
        "read": read,
        "websocket": websocket,
    }


async def _first_requests(
    kinds: dict[str, Callable[[], Awaitable[int]]],
) -> dict[str, Counter[int]]:
    """The first REQUESTS of each kind, one after another (as traffic would arrive)."""
    answers: dict[str, Counter[int]] = {}
    for name, send in kinds.items():
        answers[name] = Counter([await send() for _ in range(REQUESTS)])
    return answers


@pytest.mark.parametrize("server", ["redis", "postgres", "kafka"])
async def test_the_first_requests_after_a_restart_all_succeed(
    stack: Stack, system: tuple[System, TestEnv], server: str
) -> None:
    running, _ = system
    gateway = running.gateway
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        player = await register_and_login(http, gateway, f"restart{uuid.uuid4().hex[:8]}")
        kinds = await _kinds(http, gateway, player)
        warm = await _first_requests({k: kinds[k] for k in kinds})  # every pool holds connections
        assert all(set(c) <= {200, 201, 202, 101} for c in warm.values()), warm

        if server == "redis":
            await asyncio.to_thread(stack.kill_redis)
            await asyncio.to_thread(stack.start_redis)
        elif server == "postgres":
            await asyncio.to_thread(stack.stop_postgres, "immediate")
            await asyncio.to_thread(stack.start_postgres)
        else:
            await asyncio.to_thread(stack.kill_kafka)
            await asyncio.to_thread(stack.start_kafka)

        answers = await _first_requests(kinds)
    expected = {"login": 200, "ticket": 201, "update": 202, "read": 200, "websocket": 101}
    failed = {k: dict(c) for k, c in answers.items() if set(c) != {expected[k]}}
    assert not failed, f"after the {server} restart: {failed}"
