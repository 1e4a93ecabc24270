"""The whole path for real: gateway → Kafka → score → PostgreSQL → outbox → Kafka → broadcaster →
Redis → WebSocket, with the contract's checks on the way."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from typing import Any

import aiohttp
import asyncpg
import redis.asyncio as aioredis

from common.keyspace import DONE_APPLIED, done_key, ticket_key
from testkit.env import TestEnv
from tests.e2e.harness import System, complete_action, register_and_login


def _name() -> str:
    return f"p{uuid.uuid4().hex[:12]}"


async def _next_frame(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        msg = await ws.receive(timeout=10)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame: dict[str, Any] = json.loads(msg.data)
        if frame["type"] == kind:
            return frame


async def test_completed_action_reaches_watchers_and_postgres(
    system: System, http: aiohttp.ClientSession, e2e_env: TestEnv
) -> None:
    player = await register_and_login(http, system.gateway, _name())
    ws_url = system.gateway.replace("http", "ws", 1) + "/ws/scoreboard"
    async with http.ws_connect(ws_url) as watcher:
        first = await _next_frame(watcher, "top")
        status, body = await complete_action(http, system.gateway, player, "quest", wait_s=10)
        assert status == 200, body
        assert body["status"] == "applied"
        assert body["score"] == 50
        assert body["user_id"] == player.user_id
        # The watcher sees the player on the board, with a newer version.
        async with asyncio.timeout(5):
            while True:
                frame = await _next_frame(watcher, "top")
                mine = [e for e in frame["entries"] if e["user_id"] == player.user_id]
                if mine:
                    break
        assert frame["version"] > first["version"]
        assert mine[0]["score"] == 50
        assert mine[0]["username"] == player.username

    conn = await asyncpg.connect(e2e_env.postgres_dsn)
    try:
        row = await conn.fetchrow(
            "SELECT score, version FROM scores WHERE user_id = $1", uuid.UUID(player.user_id)
        )
    finally:
        await conn.close()
    assert row is not None
    assert (row["score"], row["version"]) == (50, 1)

    async with http.get(f"{system.gateway}/api/scoreboard/me", headers=player.auth) as resp:
        assert resp.status == 200
        me = await resp.json()
    assert me["score"] == 50
    assert me["rank"] >= 1


async def test_an_applied_action_is_confirmed_to_the_gateway(
    system: System, http: aiohttp.ClientSession, e2e_env: TestEnv, redis_client: aioredis.Redis
) -> None:
    """Once applied, the action's claim turns into "applied" and its ticket is gone, so a
    retry is a 409 for good (see common.keyspace)."""
    player = await register_and_login(http, system.gateway, _name())
    status, body = await complete_action(http, system.gateway, player, "tap", wait_s=10)
    assert status == 200, body
    action_id = str(body["action_id"])
    done = done_key(e2e_env.redis_prefix, action_id)
    async with asyncio.timeout(10):
        while await redis_client.get(done) != DONE_APPLIED.encode():  # noqa: ASYNC110 - broadcaster
            await asyncio.sleep(0.05)
    assert await redis_client.exists(ticket_key(e2e_env.redis_prefix, action_id)) == 0


async def test_replayed_action_is_refused_and_counts_once(
    system: System, http: aiohttp.ClientSession
) -> None:
    player = await register_and_login(http, system.gateway, _name())
    async with http.post(
        f"{system.gateway}/api/actions", json={"action_type": "tap"}, headers=player.auth
    ) as resp:
        ticket = await resp.json()
    body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
    url = f"{system.gateway}/api/scoreboard/update"
    headers = {**player.auth, "Prefer": "wait=10"}
    async with http.post(url, json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    async with http.post(url, json=body, headers=headers) as resp:
        assert resp.status == 409
        assert resp.content_type == "application/problem+json"
    async with http.get(f"{system.gateway}/api/scoreboard/users/{player.user_id}") as resp:
        assert (await resp.json())["score"] == 1


async def test_forged_and_foreign_updates_are_refused(
    system: System, http: aiohttp.ClientSession
) -> None:
    alice = await register_and_login(http, system.gateway, _name())
    mallory = await register_and_login(http, system.gateway, _name())
    async with http.post(
        f"{system.gateway}/api/actions", json={"action_type": "tap"}, headers=alice.auth
    ) as resp:
        ticket = await resp.json()
    url = f"{system.gateway}/api/scoreboard/update"
    body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
    # No token, a garbage token.
    async with http.post(url, json=body) as resp:
        assert resp.status == 401
    async with http.post(url, json=body, headers={"Authorization": "Bearer x.y.z"}) as resp:
        assert resp.status == 401
    # Claiming to be someone else.
    async with http.post(
        url, json={**body, "user_id": alice.user_id}, headers=mallory.auth
    ) as resp:
        assert resp.status == 403
    # Someone else's ticket, a forged hash, inflated points.
    async with http.post(url, json=body, headers=mallory.auth) as resp:
        assert resp.status == 400
    forged = {**body, "action_hash": body["action_hash"][:-4] + "0000"}
    async with http.post(url, json=forged, headers=alice.auth) as resp:
        assert resp.status == 400
    async with http.post(url, json={**body, "points": 1000}, headers=alice.auth) as resp:
        assert resp.status == 400
    # None of that counted; the honest submission still works once.
    async with http.post(url, json=body, headers={**alice.auth, "Prefer": "wait=10"}) as resp:
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["score"] == 1


async def test_a_deleted_player_leaves_the_live_board(
    system: System, http: aiohttp.ClientSession, e2e_env: TestEnv
) -> None:
    player = await register_and_login(http, system.gateway, _name())
    for _ in range(6):  # into the top 10, whoever else this suite put on the board
        status, body = await complete_action(http, system.gateway, player, "quest", wait_s=10)
        assert status == 200, body
        if body["rank"] in range(1, 6):
            break
    ws_url = system.gateway.replace("http", "ws", 1) + "/ws/scoreboard"
    async with http.ws_connect(ws_url) as watcher:
        shown = await _next_frame(watcher, "top")
        assert player.user_id in [e["user_id"] for e in shown["entries"]]
        # The operator's command, as the runbook gives it (docs/operations.md).
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "auth",
            "delete-user",
            player.username,
            env={**os.environ, **e2e_env.environ()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, err.decode()
        async with asyncio.timeout(5):
            while True:
                frame = await _next_frame(watcher, "top")
                if player.user_id not in [e["user_id"] for e in frame["entries"]]:
                    break
        assert frame["version"] > shown["version"]
    async with http.get(f"{system.gateway}/api/scoreboard/users/{player.user_id}") as resp:
        assert resp.status == 404
