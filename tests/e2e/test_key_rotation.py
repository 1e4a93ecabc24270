"""Signing keys rotate under traffic without a single failed request."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid

import aiohttp
import jwt

from tests.e2e.harness import System, register_and_login


async def test_rotation_under_traffic_fails_no_request(
    system: System, http: aiohttp.ClientSession
) -> None:
    gateway = system.gateway
    player = await register_and_login(http, gateway, f"r{uuid.uuid4().hex[:10]}")
    creds = {"username": player.username, "password": player.password}
    statuses: list[int] = []
    kids: list[str] = []
    stop = asyncio.Event()
    new_key_in_use = asyncio.Event()
    target: dict[str, str] = {}

    async def traffic() -> None:
        # A fresh token each round (so tokens signed by the new key show up), used at once.
        while not stop.is_set():
            async with http.post(f"{gateway}/api/auth/login", json=creds) as resp:
                statuses.append(resp.status)
                if resp.status != 200:
                    continue
                token = (await resp.json())["access_token"]
            kids.append(jwt.get_unverified_header(token)["kid"])
            if target and kids.count(target["kid"]) >= 5:
                new_key_in_use.set()
            async with http.get(
                f"{gateway}/api/scoreboard/me", headers={"Authorization": f"Bearer {token}"}
            ) as resp:
                statuses.append(resp.status)

    runner = asyncio.create_task(traffic())
    await asyncio.sleep(1.0)
    old_kid = kids[-1]
    env = {**system.services["auth"].env, "SCOREBOARD_LOG_LEVEL": "WARNING"}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "auth", "rotate-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    new_kid = target["kid"] = json.loads(done.stdout)["kid"]
    try:
        await asyncio.wait_for(new_key_in_use.wait(), 20)
    finally:
        stop.set()
        await runner

    assert kids.count(new_kid) >= 5, "auth never started signing with the new key"
    assert old_kid != new_kid
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
