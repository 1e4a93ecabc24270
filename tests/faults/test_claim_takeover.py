"""A gateway killed between claiming an action and publishing it: the client's retry, on another
gateway, gets the update through within a few seconds, and the action counts once.

The crash point is real: the gateway started with ``SCOREBOARD_CRASH_POINT=after_claim`` SIGKILLs
itself right after the admission script claimed the action (``c:<ms>:<gateway>`` in Redis),
before anything reached Kafka. Before the claim states existed, the retry got 409 for the claim's
15 s and the client, told "already done", stopped: the update was lost.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

import aiohttp
import asyncpg
import pytest

from testkit.env import Infra, TestEnv, create_test_env, drop_test_env
from testkit.stack import free_port
from tests.e2e.harness import E2E_CATALOG, Service, register_and_login, start_system

pytestmark = pytest.mark.integration

STALE_AFTER_S = 3.0


@pytest.fixture
async def env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A slice of its own."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


async def test_a_retry_after_a_gateway_died_between_claim_and_publish_counts_once(
    env: TestEnv,
) -> None:
    settings = {
        "SCOREBOARD_ACTION_CATALOG": json.dumps(E2E_CATALOG),
        "SCOREBOARD_PUBLISH_TIMEOUT_S": "2",
        "SCOREBOARD_CLAIM_STALE_AFTER_S": str(STALE_AFTER_S),
    }
    system = start_system(env, settings)
    survivor = system.gateway
    doomed_port = free_port()
    doomed = Service(
        "gateway-doomed",
        doomed_port,
        {
            **system.services["gateway"].env,
            "SCOREBOARD_PORT": str(doomed_port),
            "SCOREBOARD_CRASH_POINT": "after_claim",
        },
        module="gateway",
    )
    doomed.start()
    try:
        doomed.wait_ready()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            player = await register_and_login(http, survivor, f"doomed{uuid.uuid4().hex[:10]}")
            async with http.post(
                f"{survivor}/api/actions", json={"action_type": "quest"}, headers=player.auth
            ) as resp:
                assert resp.status == 201
                ticket = await resp.json()
            await asyncio.sleep(E2E_CATALOG["quest"]["min_duration_ms"] / 1000 + 0.05)
            body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
            update = "/api/scoreboard/update"

            with pytest.raises(aiohttp.ClientConnectionError):
                await http.post(f"{doomed.url}{update}", json=body, headers=player.auth)
            assert doomed.proc is not None
            assert doomed.proc.wait(timeout=10) != 0  # it really died, mid-request

            started = time.monotonic()
            async with http.post(
                f"{survivor}{update}", json=body, headers={**player.auth, "Prefer": "wait=5"}
            ) as resp:
                status, answer = resp.status, await resp.json()
            took = time.monotonic() - started
            assert status in (200, 202), answer
            assert took < STALE_AFTER_S + 3, took
            async with http.post(f"{survivor}{update}", json=body, headers=player.auth) as resp:
                assert resp.status == 409  # recorded now: a further retry is told so at once

        conn = await asyncpg.connect(env.postgres_dsn)
        try:
            action_id = uuid.UUID(body["action_id"])
            query = "SELECT count(*) FROM actions WHERE action_id = $1"
            async with asyncio.timeout(20):
                while not await conn.fetchval(query, action_id):  # noqa: ASYNC110 - polling PG
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            score = await conn.fetchval(
                "SELECT score FROM scores WHERE user_id = $1", uuid.UUID(player.user_id)
            )
        finally:
            await conn.close()
        assert score == E2E_CATALOG["quest"]["points"]  # counted once
    finally:
        doomed.stop()
        system.stop()
