"""GCRA limits in Redis: exact under concurrency, atomic across limits, and over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from common.addresses import TrustedProxies, resolve_client_address
from common.gcra import Rate
from common.keyspace import done_key
from gateway.components import components_key
from gateway.ratelimit import Limit, RateLimiter
from gateway.redis_pipeline import PipelinedRedis
from gateway.settings import Settings
from services.gateway.tests.support import Client, MakeGateway, TokenMint, bearer

TAP_NOW = {"tap": {"points": 1, "min_duration_ms": 0, "max_open": 10}}


@pytest.fixture
async def limiter(gateway_settings: Callable[..., Settings]) -> AsyncIterator[RateLimiter]:
    settings = gateway_settings()
    client = PipelinedRedis(settings.redis_url)  # the gateway's: one pipelined connection
    yield RateLimiter(client, settings.redis_prefix)
    await client.aclose()


def _limit(name: str, per_second: float, burst: int) -> Limit:
    return Limit(name, uuid.uuid4().hex, Rate(per_second, burst))


async def test_exactly_burst_of_200_concurrent_requests_pass(limiter: RateLimiter) -> None:
    limit = _limit("conc", 0.001, 37)  # refills once per 1000 s: only the burst can pass
    decisions = await asyncio.gather(*(limiter.check(limit) for _ in range(200)))
    assert sum(d.allowed for d in decisions) == 37
    denied = [d for d in decisions if not d.allowed]
    assert all(d.denied_by == "conc" and 990 < d.retry_after_s <= 1000 for d in denied)


async def test_tokens_refill_at_the_rate(limiter: RateLimiter) -> None:
    limit = _limit("refill", 20.0, 1)  # one request per 50 ms
    assert (await limiter.check(limit)).allowed
    denied = await limiter.check(limit)
    assert not denied.allowed
    assert 0 < denied.retry_after_s <= 0.05
    await asyncio.sleep(denied.retry_after_s + 0.01)
    assert (await limiter.check(limit)).allowed


async def test_a_denied_request_charges_no_limit(limiter: RateLimiter) -> None:
    wide, narrow = _limit("wide", 0.001, 2), _limit("narrow", 0.001, 1)
    assert (await limiter.check(wide, narrow)).allowed
    second = await limiter.check(wide, narrow)
    assert (second.allowed, second.denied_by) == (False, "narrow")
    # "wide" still has its second token: the denied request did not take it.
    assert (await limiter.check(wide)).allowed
    assert not (await limiter.check(wide)).allowed


async def test_the_first_denying_limit_is_reported(limiter: RateLimiter) -> None:
    user, address = _limit("user", 0.001, 1), _limit("address", 0.001, 1)
    assert (await limiter.check(user, address)).allowed
    assert (await limiter.check(user, address)).denied_by == "user"


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("10.0.0.5", ["203.0.113.9"], [], "10.0.0.5"),  # untrusted peer: header ignored
        ("10.0.0.5", ["1.1.1.1, 203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),  # last hop
        ("10.0.0.5", ["1.1.1.1", "203.0.113.9"], ["10.0.0.0/8"], "203.0.113.9"),  # 2 headers
        ("10.0.0.5", ["garbage"], ["10.0.0.0/8"], "10.0.0.5"),
        ("192.0.2.1", ["203.0.113.9"], ["10.0.0.0/8"], "192.0.2.1"),
        (None, [], [], "unknown"),
    ],
)
def test_client_address(
    peer: str | None, forwarded: list[str], trusted: list[str], expected: str
) -> None:
    assert resolve_client_address(peer, forwarded, TrustedProxies.of(trusted)) == expected


async def test_200_concurrent_ticket_requests_against_a_limit_of_25(
    make_gateway: MakeGateway, mint: TokenMint
) -> None:
    client = await make_gateway(
        wait_kafka=False,
        action_catalog=TAP_NOW,
        actions_rate_per_address=0.001,
        actions_burst_per_address=25,
    )
    tokens = [mint.mint() for _ in range(20)]
    responses = await asyncio.gather(
        *(
            client.post("/api/actions", json={"action_type": "tap"}, headers=bearer(tokens[i % 20]))
            for i in range(200)
        )
    )
    statuses = Counter(r.status for r in responses)
    assert statuses == {201: 25, 429: 175}
    limited = next(r for r in responses if r.status == 429)
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.content_type == "application/problem+json"


async def _ticket(client: Client, token: str) -> dict[str, str]:
    resp = await client.post("/api/actions", json={"action_type": "tap"}, headers=bearer(token))
    assert resp.status == 201
    ticket: dict[str, str] = await resp.json()
    return {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}


async def test_score_updates_are_limited_per_user(
    make_gateway: MakeGateway, mint: TokenMint
) -> None:
    client = await make_gateway(
        action_catalog=TAP_NOW, update_rate_per_user=0.001, update_burst_per_user=2
    )
    token, other = mint.mint(), mint.mint()
    tickets = [await _ticket(client, token) for _ in range(3)]
    statuses = [
        (await client.post("/api/scoreboard/update", json=t, headers=bearer(token))).status
        for t in tickets
    ]
    assert statuses == [202, 202, 429]
    # Another player is not affected; the limited ticket was not used up either.
    resp = await client.post(
        "/api/scoreboard/update", json=await _ticket(client, other), headers=bearer(other)
    )
    assert resp.status == 202
    resp = await client.post("/api/scoreboard/update", json=tickets[2], headers=bearer(token))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1


async def test_score_updates_are_limited_per_address_behind_a_trusted_proxy(
    make_gateway: MakeGateway, mint: TokenMint
) -> None:
    client = await make_gateway(
        action_catalog=TAP_NOW,
        update_rate_per_address=0.001,
        update_burst_per_address=1,
        trusted_proxies="127.0.0.1/32",
    )

    async def submit(address: str) -> int:
        token = mint.mint()
        body = await _ticket(client, token)
        headers = {**bearer(token), "X-Forwarded-For": f"198.51.100.7, {address}"}
        return (await client.post("/api/scoreboard/update", json=body, headers=headers)).status

    assert await submit("203.0.113.1") == 202
    assert await submit("203.0.113.1") == 429  # another user, same client address
    assert await submit("203.0.113.2") == 202  # a different client behind the same proxy


async def test_auth_routes_are_limited_per_address(make_gateway: MakeGateway) -> None:
    client = await make_gateway(
        wait_kafka=False, auth_rate_per_address=0.001, auth_burst_per_address=3
    )
    creds = {"username": "ada", "password": "correct horse"}
    statuses = [(await client.post("/api/auth/login", json=creds)).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_updates_rejected_before_the_rate_limit_charge_nothing(
    make_gateway: MakeGateway, mint: TokenMint, redis_client: aioredis.Redis
) -> None:
    """401/403/409 are decided before the limits in one script, which then charges none."""
    client = await make_gateway(
        action_catalog=TAP_NOW, update_rate_per_user=0.001, update_burst_per_user=1
    )
    user_id, sid = uuid.uuid4(), str(uuid.uuid4())
    token = mint.mint(user_id, sid=sid)
    prefix = client.app[components_key].settings.redis_prefix
    update = "/api/scoreboard/update"

    done = await _ticket(client, mint.mint(user_id, sid=sid))
    await redis_client.set(done_key(prefix, done["action_id"]), "1")
    for _ in range(3):  # duplicates
        assert (await client.post(update, json=done, headers=bearer(token))).status == 409
    body = await _ticket(client, token)
    await redis_client.set(f"{prefix}user-status:{user_id}", "banned")
    for _ in range(3):
        assert (await client.post(update, json=body, headers=bearer(token))).status == 403
    await redis_client.delete(f"{prefix}user-status:{user_id}")
    # The burst of one is still there ...
    assert (await client.post(update, json=body, headers=bearer(token))).status == 202
    # ... and now spent: 429 comes before the ticket checks (an unknown ticket would be 400).
    unknown = {**body, "action_id": str(uuid.uuid4())}
    resp = await client.post(update, json=unknown, headers=bearer(token))
    assert resp.status == 429


async def test_board_reads_are_limited_per_address(make_gateway: MakeGateway) -> None:
    client = await make_gateway(
        wait_kafka=False, reads_rate_per_address=0.001, reads_burst_per_address=3
    )
    statuses = [(await client.get("/api/scoreboard/top")).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    resp = await client.get(f"/api/scoreboard/users/{uuid.uuid4()}")
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
