"""Registration throttling on the real Redis: a flood gets 429 before hashing; logins go on."""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.settings import Settings
from common.health import registry_key

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
PASSWORD = "correct horse battery"


def new_name() -> str:
    return f"s_{uuid.uuid4().hex[:12]}"


def new_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def register(client: Client, name: str, ip: str) -> tuple[int, str | None]:
    resp = await client.post(
        "/api/auth/register",
        json={"username": name, "password": PASSWORD},
        headers={"X-Forwarded-For": ip},
    )
    await resp.read()
    return resp.status, resp.headers.get("Retry-After")


async def login(client: Client, name: str, ip: str) -> int:
    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": PASSWORD},
        headers={"X-Forwarded-For": ip},
    )
    await resp.read()
    return resp.status


def hashes(client: Client) -> float:
    """Registrations' argon2id hashes this app has made (the dummy hash at start included)."""
    registry = client.app[registry_key]
    value = registry.get_sample_value("scoreboard_auth_password_hash_seconds_count", {"op": "hash"})
    return value or 0.0


async def test_one_address_bucket_gets_its_burst_then_429(make_client: MakeClient) -> None:
    client = await make_client(register_burst_per_address=3, register_rate_per_address=0.001)
    ip = new_ip()
    assert [(await register(client, new_name(), ip))[0] for _ in range(3)] == [201] * 3
    before = hashes(client)
    status, retry = await register(client, new_name(), ip)
    # The next one may pass in 1 / rate = 1000 s; nothing was hashed for the refused one.
    assert (status, retry) == (429, "1000")
    assert hashes(client) == before
    assert (await register(client, new_name(), new_ip()))[0] == 201

    # An IPv6 /64 is one bucket, and probing a taken name is charged like a registration.
    net = f"2001:db8:{random.randrange(65536):x}:{random.randrange(65536):x}"
    taken = new_name()
    assert (await register(client, taken, f"{net}::1"))[0] == 201
    assert (await register(client, taken, f"{net}::2"))[0] == 409
    assert (await register(client, new_name(), f"{net}::3"))[0] == 201
    assert (await register(client, new_name(), f"{net}::4"))[0] == 429


async def test_a_flood_from_many_addresses_gets_429_before_hashing_while_logins_succeed(
    client: Client, make_client: MakeClient, auth_settings: Callable[..., Settings]
) -> None:
    owners = [new_name() for _ in range(3)]
    for name in owners:
        assert (await register(client, name, new_ip()))[0] == 201
    # A replica with the global limit low; a prefix of its own keeps other tests' registrations
    # out of the global count.
    burst, rate = 5, 2.0
    replica = await make_client(
        register_burst_global=burst,
        register_rate_global=rate,
        redis_prefix=f"{auth_settings().redis_prefix}flood-{uuid.uuid4().hex[:8]}:",
    )
    before = hashes(replica)
    start = time.monotonic()
    flood, logins = await asyncio.gather(
        asyncio.gather(*(register(replica, new_name(), new_ip()) for _ in range(120))),
        asyncio.gather(*(login(replica, owners[i % 3], new_ip()) for i in range(30))),
    )
    elapsed = time.monotonic() - start

    assert logins == [200] * 30
    statuses = Counter(status for status, _ in flood)
    assert set(statuses) == {201, 429}
    assert statuses[201] <= burst + math.ceil(rate * elapsed)
    assert all(int(retry or 0) >= 1 for status, retry in flood if status == 429)
    # Only the admitted registrations were hashed.
    assert hashes(replica) - before == statuses[201]


async def test_registrations_cannot_starve_logins_of_hashing_workers(client: Client) -> None:
    # Registration limits lifted (the fixtures' default): only the hashing share holds them.
    owners = [new_name() for _ in range(3)]
    for name in owners:
        assert (await register(client, name, new_ip()))[0] == 201
    before = hashes(client)
    flood, logins = await asyncio.gather(
        asyncio.gather(*(register(client, new_name(), new_ip()) for _ in range(150))),
        asyncio.gather(*(login(client, owners[i % 3], new_ip()) for i in range(30))),
    )

    assert logins == [200] * 30
    statuses = Counter(status for status, _ in flood)
    # Registrations beyond their share (1 worker, 8 waiting) were shed with 503, not logins.
    assert set(statuses) == {201, 503}
    assert hashes(client) - before == statuses[201]
