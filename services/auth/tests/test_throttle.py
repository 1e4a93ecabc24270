"""Login throttling on the real Redis: per name, per address, atomic, never a lock-out for good."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request

from auth.security import client_address
from auth.settings import Settings
from auth.throttle import address_bucket, throttle_keys

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
PASSWORD = "correct horse battery"


def new_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def new_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


async def login(client: Client, name: str, password: str, ip: str) -> int:
    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": ip},
    )
    await resp.read()
    return resp.status


async def register(client: Client, name: str) -> None:
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201


async def test_name_is_locked_from_every_address_until_its_window_ends(
    make_client: MakeClient, redis_client: aioredis.Redis, auth_settings: Callable[..., Settings]
) -> None:
    client = await make_client(login_fail_per_name=3, login_fail_window_s=1.5)
    name = new_name()
    await register(client, name)
    attacker = new_ip()
    assert [await login(client, name, "guess-one", attacker) for _ in range(3)] == [401] * 3

    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": "guess-four"},
        headers={"X-Forwarded-For": attacker},
    )
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 2
    # The right password from the victim's own address is refused too while the name is
    # locked (so a 429 never tells an attacker a guess was right)...
    victim = new_ip()
    assert await login(client, name, PASSWORD, victim) == 429

    # ...and the attacker hammering on does not push the end of the window back.
    name_key = throttle_keys(auth_settings().redis_prefix, name, attacker)[0]
    ttl_before = await redis_client.pttl(name_key)
    for _ in range(5):
        assert await login(client, name, "guess-more", attacker) == 429
    assert 0 < await redis_client.pttl(name_key) <= ttl_before

    # The window ends (the counter expires in Redis); the victim logs in from their address.
    deadline = time.monotonic() + 5
    while await redis_client.exists(name_key):
        assert time.monotonic() < deadline, "the failure window never ended"
        await asyncio.sleep(0.05)
    assert await login(client, name, PASSWORD, victim) == 200


async def test_address_is_locked_across_names_but_others_are_not(make_client: MakeClient) -> None:
    client = await make_client(login_fail_per_address=3)
    name = new_name()
    await register(client, name)
    sprayer = new_ip()
    # Password spraying: one guess each against many names.
    assert [await login(client, new_name(), "Summer2024!", sprayer) for _ in range(3)] == [401] * 3
    assert await login(client, name, PASSWORD, sprayer) == 429
    assert await login(client, name, PASSWORD, new_ip()) == 200


async def test_concurrent_guesses_cannot_exceed_the_limit(make_client: MakeClient) -> None:
    client = await make_client(login_fail_per_name=5)
    name = new_name()
    await register(client, name)
    statuses = await asyncio.gather(
        *(login(client, name, f"guess-{i}", new_ip()) for i in range(20))
    )
    assert Counter(statuses) == {401: 5, 429: 15}


async def test_a_successful_login_does_not_use_up_the_allowance(make_client: MakeClient) -> None:
    client = await make_client(login_fail_per_name=3)
    name = new_name()
    await register(client, name)
    ip = new_ip()
    assert await login(client, name, "wrong-1", ip) == 401
    assert await login(client, name, "wrong-2", ip) == 401
    assert await login(client, name, PASSWORD, ip) == 200
    assert await login(client, name, "wrong-3", ip) == 401  # the third failure, not the fourth
    assert await login(client, name, PASSWORD, ip) == 429


async def test_unknown_names_are_throttled_like_real_ones(make_client: MakeClient) -> None:
    client = await make_client(login_fail_per_name=2)
    ghost, ip = new_name(), new_ip()
    assert [await login(client, ghost, "whatever1", ip) for _ in range(3)] == [401, 401, 429]


async def test_without_trusted_proxy_the_peer_is_the_address(
    make_client: MakeClient, auth_settings: Callable[..., Settings]
) -> None:
    # Counted by peer, forged X-Forwarded-For values buy nothing. A prefix of our own keeps
    # other tests' failures from 127.0.0.1 out of the count.
    client = await make_client(
        trust_forwarded_for=False,
        login_fail_per_address=2,
        redis_prefix=f"{auth_settings().redis_prefix}peer-{uuid.uuid4().hex[:8]}:",
    )
    statuses = [await login(client, new_name(), "guess-guess", new_ip()) for _ in range(3)]
    assert statuses == [401, 401, 429]


def test_client_address_trusts_only_the_last_forwarded_hop() -> None:
    forged = make_mocked_request("POST", "/", headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})
    assert client_address(forged, trust_forwarded_for=True) == "203.0.113.9"
    garbage = make_mocked_request("POST", "/", headers={"X-Forwarded-For": "not-an-ip"})
    peer = client_address(garbage, trust_forwarded_for=False)
    assert peer != "not-an-ip"
    assert client_address(garbage, trust_forwarded_for=True) == peer
    assert client_address(forged, trust_forwarded_for=False) == peer


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.9", "203.0.113.9"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::99", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.4", "198.51.100.4"),
        ("unknown", "unknown"),
    ],
)
def test_ipv6_clients_are_counted_per_64(address: str, bucket: str) -> None:
    assert address_bucket(address) == bucket
