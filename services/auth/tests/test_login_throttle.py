"""Login throttling on the real Redis: an attacker is throttled, the owner still logs in."""

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

from auth.login_throttle import SlowDown, throttle_keys
from auth.security import client_address
from auth.settings import Settings
from common.addresses import address_bucket
from common.health import registry_key

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
PASSWORD = "correct horse battery"
# Most tests are about counting, not waiting: a short slow-down keeps them quick.
QUICK = {"login_delay_base_s": 0.001, "login_delay_max_s": 0.01}


def new_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


def new_ip() -> str:
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


def new_ipv6_net() -> str:
    """A fresh /64's prefix, e.g. ``2001:db8:1a2b:3c4d``; append ``::host``."""
    return f"2001:db8:{random.randrange(65536):x}:{random.randrange(65536):x}"


async def attempt(client: Client, name: str, password: str, ip: str) -> tuple[int, str | None]:
    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": ip},
    )
    await resp.read()
    return resp.status, resp.headers.get("Retry-After")


async def login(client: Client, name: str, password: str, ip: str) -> int:
    return (await attempt(client, name, password, ip))[0]


async def register(client: Client, name: str) -> None:
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201


async def test_the_owner_logs_in_while_an_attacker_hammers_the_name(
    make_client: MakeClient,
) -> None:
    # The defaults (5 per name and address bucket, 100 per name, 50 per bucket, 15 minutes),
    # with a short slow-down so the test is quick.
    client = await make_client(**QUICK)
    name = new_name()
    await register(client, name)
    # The attacker has two IPv4 addresses and a whole IPv6 /64, and uses a fresh address of the
    # /64 for every guess: 10 guesses from each source.
    net = new_ipv6_net()
    sources = [[new_ip()] * 10, [new_ip()] * 10, [f"{net}::{i + 1:x}" for i in range(10)]]
    for addresses in sources:
        answers = [await attempt(client, name, f"guess-{i}", ip) for i, ip in enumerate(addresses)]
        assert [status for status, _ in answers] == [401] * 5 + [429] * 5
        # Retry-After: the rest of the 15-minute window the first failure started.
        assert all(890 <= int(retry or 0) <= 900 for _, retry in answers[5:])

    # The owner, from an address of their own, logs in at once...
    owner = new_ip()
    assert await login(client, name, PASSWORD, owner) == 200
    # ...and that does not reset the attacker's counters: every source is still refused.
    for addresses in sources:
        assert await login(client, name, "guess-again", addresses[0]) == 429
    # The attacker got 15 guesses in all; the owner was never refused.
    metrics = client.app[registry_key]
    assert metrics.get_sample_value(
        "scoreboard_auth_logins_total", {"outcome": "throttled_name_and_address"}
    )


async def test_the_name_limit_stops_a_botnet_and_its_window_ends(
    make_client: MakeClient, redis_client: aioredis.Redis, auth_settings: Callable[..., Settings]
) -> None:
    client = await make_client(
        login_fail_per_name_and_address=2, login_fail_per_name=6, login_fail_window_s=1.5, **QUICK
    )
    name = new_name()
    await register(client, name)
    bots = [new_ip() for _ in range(3)]
    assert [await login(client, name, "guess-one", ip) for ip in bots for _ in range(2)] == [
        401
    ] * 6

    # Six failures from three buckets: now every address is refused for this name, the owner's
    # too (the price of a backstop against botnets; it takes per_name / per-pair buckets), and
    # a 429 never tells whether a guess was right.
    status, retry = await attempt(client, name, PASSWORD, new_ip())
    assert status == 429
    assert 1 <= int(retry or 0) <= 2
    name_key = throttle_keys(auth_settings().redis_prefix, name, bots[0])[1]
    ttl_before = await redis_client.pttl(name_key)
    for _ in range(5):  # the botnet hammering on does not push the end of the window back
        assert await login(client, name, "guess-more", new_ip()) == 429
    assert 0 < await redis_client.pttl(name_key) <= ttl_before

    deadline = time.monotonic() + 5
    while await redis_client.exists(name_key):
        assert time.monotonic() < deadline, "the failure window never ended"
        await asyncio.sleep(0.05)
    assert await login(client, name, PASSWORD, new_ip()) == 200


async def test_a_success_clears_only_its_own_bucket(
    make_client: MakeClient, redis_client: aioredis.Redis, auth_settings: Callable[..., Settings]
) -> None:
    client = await make_client(login_fail_per_name_and_address=3, **QUICK)
    prefix = auth_settings().redis_prefix
    name = new_name()
    await register(client, name)
    owner, attacker = new_ip(), new_ip()
    assert [await login(client, name, "typo-typo", owner) for _ in range(2)] == [401, 401]
    assert [await login(client, name, "guess-guess", attacker) for _ in range(2)] == [401, 401]

    assert await login(client, name, PASSWORD, owner) == 200
    owner_pair, name_key, owner_addr = throttle_keys(prefix, name, owner)
    attacker_pair, _, attacker_addr = throttle_keys(prefix, name, attacker)
    # The owner's typos are forgiven; the attacker's failures and the name's total stay.
    assert await redis_client.get(owner_pair) is None
    assert await redis_client.mget(attacker_pair, name_key, owner_addr, attacker_addr) == [
        b"2",
        b"4",
        b"2",
        b"2",
    ]
    assert [await login(client, name, "guess-guess", attacker) for _ in range(2)] == [401, 429]
    # The owner has their whole allowance again.
    assert [await login(client, name, "typo-typo", owner) for _ in range(4)] == [401] * 3 + [429]


async def test_a_sprayer_is_refused_and_its_own_login_resets_nothing(
    make_client: MakeClient,
) -> None:
    client = await make_client(login_fail_per_address=3, **QUICK)
    own, victim = new_name(), new_name()
    await register(client, own)
    await register(client, victim)
    sprayer = new_ip()
    # Password spraying: one guess each against many names.
    assert [await login(client, new_name(), "Summer2024!", sprayer) for _ in range(2)] == [401] * 2
    # Logging in to an account of its own gives back only that attempt, not the spraying.
    assert await login(client, own, PASSWORD, sprayer) == 200
    assert await login(client, new_name(), "Summer2024!", sprayer) == 401
    assert await login(client, victim, PASSWORD, sprayer) == 429
    assert await login(client, victim, PASSWORD, new_ip()) == 200


async def test_concurrent_guesses_on_two_replicas_cannot_exceed_a_limit(
    make_client: MakeClient,
) -> None:
    replicas = [await make_client(login_fail_per_name=5, **QUICK) for _ in range(2)]
    name = new_name()
    await register(replicas[0], name)
    ip = new_ip()
    # From one address: the pair's limit (5); from twenty: the name's (5 here).
    one_source = await asyncio.gather(
        *(login(replicas[i % 2], name, f"guess-{i}", ip) for i in range(20))
    )
    assert Counter(one_source) == {401: 5, 429: 15}

    other = new_name()
    await register(replicas[0], other)
    many_sources = await asyncio.gather(
        *(login(replicas[i % 2], other, f"guess-{i}", new_ip()) for i in range(20))
    )
    assert Counter(many_sources) == {401: 5, 429: 15}


async def test_each_failure_slows_the_next_attempt_right_password_too(
    make_client: MakeClient,
) -> None:
    client = await make_client(login_delay_base_s=0.2, login_delay_max_s=0.4)
    name = new_name()
    await register(client, name)
    ip = new_ip()

    async def timed(password: str) -> tuple[int, float]:
        start = time.perf_counter()
        status = await login(client, name, password, ip)
        return status, time.perf_counter() - start

    first, second, third = [await timed("wrong-wrong") for _ in range(3)]
    assert [first[0], second[0], third[0]] == [401] * 3
    assert second[1] >= 0.2  # one failure before it
    assert third[1] >= 0.4  # two failures
    # The right password waits just as long (capped): timing does not tell it apart.
    status, elapsed = await timed(PASSWORD)
    assert status == 200
    assert elapsed >= 0.4


@pytest.mark.parametrize(
    ("counts", "delay"),
    [
        ((0, 0, 0), 0.0),
        ((1, 1, 1), 0.25),  # one failure of this pair
        ((2, 2, 2), 0.5),
        ((3, 3, 3), 1.0),
        ((4, 4, 4), 2.0),  # the last admitted one at the defaults
        ((0, 19, 0), 0.0),  # the name's 20 failures are one step
        ((0, 20, 0), 0.25),
        ((0, 99, 0), 2.0),
        ((0, 0, 10), 0.25),  # the address's 10 failures are one step
        ((0, 0, 49), 2.0),
    ],
)
def test_the_slow_down_doubles_towards_the_fullest_limit(
    counts: tuple[int, int, int], delay: float
) -> None:
    assert SlowDown(0.25, 4.0).delay_s(counts, (5, 100, 50)) == delay


def test_the_slow_down_is_capped() -> None:
    assert SlowDown(0.25, 4.0).delay_s((19, 0, 0), (20, 100, 50)) == 4.0
    assert SlowDown(0.0, 4.0).delay_s((3, 0, 0), (5, 100, 50)) == 0.0


async def test_unknown_names_are_throttled_like_real_ones(make_client: MakeClient) -> None:
    client = await make_client(login_fail_per_name_and_address=2, **QUICK)
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
        **QUICK,
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


def test_keys_name_the_bucket_before_the_name() -> None:
    assert throttle_keys("p:", "Alice", "2001:db8:1:2::9") == (
        "p:login-fail:pair:2001:db8:1:2::/64:alice",
        "p:login-fail:name:alice",
        "p:login-fail:addr:2001:db8:1:2::/64",
    )
