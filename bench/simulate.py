"""Simulated players for `make demo`: they sign up, then complete actions through the real flow
(ticket → wait the minimum duration → update), so the live board at http://127.0.0.1:8080/ moves.

    uv run python bench/simulate.py --players 25 --duration 600 [--gateway http://127.0.0.1:8080]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import time

import aiohttp

NAMES = "ada bob cy dee eve fay gus hal ivy jo kai lu max nia oz pam quin rae sol tea uma vic"


async def player(
    http: aiohttp.ClientSession, gateway: str, name: str, until: float, stats: dict[str, int]
) -> None:
    """One player: register (or log in again), then act until the deadline."""
    password = "demo-password-" + name
    creds = {"username": name, "password": password}
    async with http.post(f"{gateway}/api/auth/register", json=creds) as resp:
        if resp.status not in (201, 409):
            print(f"{name}: register {resp.status} {await resp.text()}")
            return
    async with http.post(f"{gateway}/api/auth/login", json=creds) as resp:
        if resp.status != 200:
            print(f"{name}: login {resp.status} {await resp.text()}")
            return
        token = (await resp.json())["access_token"]
    auth = {"Authorization": f"Bearer {token}"}
    async with http.get(f"{gateway}/api/actions/types") as resp:
        types = await resp.json()
    skill = random.uniform(0.3, 1.0)  # some players are busier than others
    while time.monotonic() < until:
        kind = random.choice(types)
        async with http.post(
            f"{gateway}/api/actions", json={"action_type": kind["action_type"]}, headers=auth
        ) as resp:
            if resp.status == 401:  # token expired: log in again
                return await player(http, gateway, name, until, stats)
            if resp.status != 201:
                stats[f"ticket_{resp.status}"] = stats.get(f"ticket_{resp.status}", 0) + 1
                await asyncio.sleep(1)
                continue
            ticket = await resp.json()
        await asyncio.sleep(kind["min_duration_ms"] / 1000 + random.uniform(0.2, 3.0) / skill)
        body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
        async with http.post(f"{gateway}/api/scoreboard/update", json=body, headers=auth) as resp:
            key = f"update_{resp.status}"
            stats[key] = stats.get(key, 0) + 1


async def main() -> None:
    """Run the players and print a tally every 10 s."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", default="http://127.0.0.1:8080")
    parser.add_argument("--players", type=int, default=25)
    parser.add_argument("--duration", type=float, default=600, help="seconds")
    args = parser.parse_args()
    names = NAMES.split()
    suffix = secrets.token_hex(2)
    until = time.monotonic() + args.duration
    stats: dict[str, int] = {}
    async with aiohttp.ClientSession() as http:
        tasks = [
            asyncio.create_task(
                player(
                    http,
                    args.gateway,
                    f"{names[i % len(names)]}{i // len(names) or ''}_{suffix}",
                    until,
                    stats,
                )
            )
            for i in range(args.players)
        ]
        print(f"{args.players} players acting for {args.duration:.0f}s; watch {args.gateway}/")
        while not all(t.done() for t in tasks):
            await asyncio.sleep(10)
            print(f"tally: {dict(sorted(stats.items()))}")
        await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main())
