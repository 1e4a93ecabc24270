"""A gateway replica killed (SIGKILL) under traffic: the other replica on the same port keeps
serving, every update acknowledged with 202 is applied exactly once, and so is every update
whose first attempt was cut off and whose retry was told 409 (409 means recorded)."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from testkit.env import Infra, TestEnv, create_test_env, drop_test_env
from tests.e2e.harness import E2E_CATALOG, Player, register_and_login, start_system

pytestmark = pytest.mark.integration

PLAYERS = 4
ACTIONS_PER_PLAYER = 40


@pytest.fixture
async def env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A slice of its own."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


async def _retrying(
    http: aiohttp.ClientSession, url: str, body: dict[str, str], player: Player
) -> tuple[int, dict[str, str], bool]:
    """POST until an answer arrives, as the contract tells clients to: a dropped connection (the
    killed replica) or a 503 (nothing recorded) is retried with the same body. Returns the
    status, the answer and whether an attempt was cut off."""
    cut_off = False
    for _ in range(50):
        try:
            async with http.post(url, json=body, headers=player.auth) as resp:
                if resp.status != 503:
                    return resp.status, await resp.json(content_type=None), cut_off
        except (TimeoutError, aiohttp.ClientConnectionError):
            cut_off = True
        await asyncio.sleep(0.1)
    raise AssertionError(f"no answer from {url}")


async def test_killed_gateway_replica_loses_no_acknowledged_update(env: TestEnv) -> None:
    system = start_system(
        env,
        {
            "SCOREBOARD_ACTION_CATALOG": json.dumps(E2E_CATALOG),
            "SCOREBOARD_UPDATE_RATE_PER_ADDRESS": "100000",
            "SCOREBOARD_UPDATE_BURST_PER_ADDRESS": "100000",
            "SCOREBOARD_ACTIONS_RATE_PER_ADDRESS": "100000",
            "SCOREBOARD_ACTIONS_BURST_PER_ADDRESS": "100000",
            "SCOREBOARD_UPDATE_RATE_PER_USER": "100000",
            "SCOREBOARD_UPDATE_BURST_PER_USER": "100000",
        },
        gateways=2,
    )
    acknowledged: set[str] = set()
    recorded: set[str] = set()  # cut off, then 409: the first attempt recorded it
    interrupted: list[bool] = []
    try:
        gateway = system.gateway
        timeout = aiohttp.ClientTimeout(total=10)
        # A connection per request, so the kernel spreads requests over both replicas.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
            players = [
                await register_and_login(http, gateway, f"crash{uuid.uuid4().hex[:10]}")
                for _ in range(PLAYERS)
            ]
            halfway = asyncio.Event()

            async def play(player: Player) -> None:
                for n in range(ACTIONS_PER_PLAYER):
                    if n == ACTIONS_PER_PLAYER // 2:
                        halfway.set()
                    status, ticket, _ = await _retrying(
                        http, f"{gateway}/api/actions", {"action_type": "tap"}, player
                    )
                    assert status == 201, ticket
                    body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
                    status, answer, cut_off = await _retrying(
                        http, f"{gateway}/api/scoreboard/update", body, player
                    )
                    interrupted.append(cut_off)
                    if status == 202:
                        acknowledged.add(body["action_id"])
                    else:
                        assert (status, cut_off) == (409, True), answer
                        recorded.add(body["action_id"])

            async def crash() -> None:
                await halfway.wait()
                system.services["gateway-2"].stop(signal.SIGKILL)

            await asyncio.gather(crash(), *(play(p) for p in players))
            assert system.services["gateway"].proc is not None
            assert system.services["gateway"].proc.poll() is None  # the survivor serves on

            user_ids = [uuid.UUID(p.user_id) for p in players]
            conn = await asyncpg.connect(env.postgres_dsn)
            try:
                async with asyncio.timeout(30):
                    while True:
                        rows = await conn.fetch(
                            "SELECT action_id FROM actions WHERE user_id = ANY($1::uuid[])",
                            user_ids,
                        )
                        applied = {str(r["action_id"]) for r in rows}
                        if acknowledged | recorded <= applied:
                            break
                        await asyncio.sleep(0.2)
                await asyncio.sleep(1.0)  # a duplicate would have landed by now
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    rows = await conn.fetch(
                        "SELECT action_id FROM actions WHERE user_id = ANY($1)", user_ids
                    )
                    total = await conn.fetchval(
                        "SELECT coalesce(sum(score), 0) FROM scores WHERE user_id = ANY($1)",
                        user_ids,
                    )
                applied = {str(r["action_id"]) for r in rows}
            finally:
                await conn.close()
    finally:
        system.stop()

    assert len(acknowledged) + len(recorded) == PLAYERS * ACTIONS_PER_PLAYER
    # 409 means recorded: every update answered 202 or 409 is applied, and nothing else.
    assert applied == acknowledged | recorded
    # Each applied action counted once (tap = 1 point).
    assert total == len(applied), f"{sum(interrupted)} updates were cut off by the crash"
