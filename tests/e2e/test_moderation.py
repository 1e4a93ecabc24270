"""Moderation through the real processes, each under its own PostgreSQL role and Redis user: the
operator's `auth ban` takes a player off the board at once and integrators get a UserRemoved
on Kafka; `auth unban` brings the player back, with a UserRestored."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer

from common.events import Topics
from testkit.env import TestEnv
from tests.e2e.harness import System, complete_action, register_and_login


async def _auth(env: TestEnv, *args: str) -> str:
    """``auth <args>`` as the operator runs it (auth's own role and Redis user)."""
    environ = env.environ()
    environ["SCOREBOARD_POSTGRES_DSN"] = env.postgres_dsn_as("auth")
    environ["SCOREBOARD_REDIS_URL"] = env.redis_url_as("auth")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth",
        *args,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def _standing_is(http: aiohttp.ClientSession, url: str, status: int) -> Any:
    """Wait until the player's standing answers ``status`` (the board changes within moments)."""
    async with asyncio.timeout(10):
        while True:
            async with http.get(url) as resp:
                if resp.status == status:
                    return await resp.json(content_type=None)
            await asyncio.sleep(0.05)


async def _removals(env: TestEnv, user_id: str, count: int) -> list[dict[str, Any]]:
    """The user's events on the removals topic, as an integrator reads them."""
    consumer = AIOKafkaConsumer(
        Topics(env.topic_prefix).removals,
        **env.kafka_auth("integrator").aiokafka(),
        bootstrap_servers=env.kafka_bootstrap,
        group_id=f"{env.topic_prefix}integrator-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    found: list[dict[str, Any]] = []
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found += [json.loads(r.value) for r in records if r.key == user_id.encode()]
    finally:
        await consumer.stop()
    return found


async def test_ban_and_unban_from_the_cli_reach_the_board_and_kafka(
    system: System, http: aiohttp.ClientSession, e2e_env: TestEnv
) -> None:
    player = await register_and_login(http, system.gateway, f"m{uuid.uuid4().hex[:12]}")
    # Enough to lead the board: a run's players score a few quests at most.
    for _ in range(3):
        status, body = await complete_action(http, system.gateway, player, "quest", wait_s=10)
        assert status == 200, body
    url = f"{system.gateway}/api/scoreboard/users/{player.user_id}"
    before = await _standing_is(http, url, 200)
    await _auth(e2e_env, "ban", player.username)
    await _standing_is(http, url, 404)
    await _auth(e2e_env, "unban", player.username)
    after = await _standing_is(http, url, 200)
    assert after["score"] == before["score"] == 150

    removed, restored = await _removals(e2e_env, player.user_id, 2)
    assert (removed["type"], removed["data"]["reason"]) == ("scoreboard.user.removed.v1", "banned")
    assert restored["type"] == "scoreboard.user.restored.v1"
    assert restored["data"]["seq"] > removed["data"]["seq"]
