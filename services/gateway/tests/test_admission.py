"""Every rule of the update path, in the contract's order: 401 → 403 → 409 → 429 → 400.

One completion breaks a 400 rule and, on top of it, every rule that ranks above: no token, a
revoked session, a deleted user, a banned user, someone else's user id, an action already
completed, an exhausted rate limit. Lifting the violations one at a time, from the top, must
reveal each answer in turn; once the 400 is lifted too, the completion is accepted (once).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import redis.asyncio as aioredis

from common.keyspace import done_key, revoked_session_key, ticket_key, user_status_key
from gateway.components import components_key
from gateway.ratelimit import Limit
from services.gateway.tests.support import CATALOG, UPDATE, Client, MakeGateway, Player, TokenMint


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Client:
    return await make_gateway(action_catalog=CATALOG)


@dataclass
class Broken:
    """A completion that breaks one 400 rule, and how to mend it."""

    body: dict[str, Any]
    detail: str
    mend: Callable[[], Awaitable[dict[str, Any]]]


async def _tamper(redis: aioredis.Redis, key: str, **fields: Any) -> Callable[[], Awaitable[None]]:
    original = await redis.get(key)
    assert original is not None
    await redis.set(key, json.dumps({**json.loads(original), **fields}), keepttl=True)

    async def restore() -> None:
        await redis.set(key, original, keepttl=True)

    return restore


async def _ticket_key(player: Player, body: dict[str, Any]) -> str:
    prefix = player.client.app[components_key].settings.redis_prefix
    return ticket_key(prefix, body["action_id"])


async def _unknown(player: Player, redis: aioredis.Redis) -> Broken:
    body = await player.completion()

    async def mend() -> dict[str, Any]:
        return body

    return Broken({**body, "action_id": str(uuid.uuid4())}, "unknown or expired", mend)


async def _tampered(
    player: Player, redis: aioredis.Redis, action_type: str, detail: str, **fields: Any
) -> Broken:
    body = await player.completion(action_type)
    restore = await _tamper(redis, await _ticket_key(player, body), **fields)

    async def mend() -> dict[str, Any]:
        await restore()
        return body

    return Broken(body, detail, mend)


async def _expired(player: Player, redis: aioredis.Redis) -> Broken:
    return await _tampered(player, redis, "tap", "unknown or expired", expires_ms=946_684_800_000)


async def _not_yours(player: Player, redis: aioredis.Redis) -> Broken:
    other = str(uuid.uuid4())
    return await _tampered(player, redis, "tap", "issued to another user", user_id=other)


async def _body_change(player: Player, detail: str, **change: Any) -> Broken:
    body = await player.completion()

    async def mend() -> dict[str, Any]:
        return body

    return Broken({**body, **change}, detail, mend)


async def _hash_invalid(player: Player, redis: aioredis.Redis) -> Broken:
    return await _body_change(player, "action_hash does not verify", action_hash="k9.00")


async def _type_mismatch(player: Player, redis: aioredis.Redis) -> Broken:
    return await _body_change(player, "does not match the ticket", action_type="quest")


async def _points(player: Player, redis: aioredis.Redis) -> Broken:
    return await _body_change(player, "points must be 1", points=999)


async def _too_fast(player: Player, redis: aioredis.Redis) -> Broken:
    body = await player.completion("slow")
    key = await _ticket_key(player, body)

    async def mend() -> dict[str, Any]:
        stored = json.loads(await redis.get(key) or b"{}")
        await _tamper(redis, key, issued_ms=stored["issued_ms"] - 61_000)
        return body

    return Broken(body, "takes at least 60000 ms", mend)


RULES_400 = {
    "ticket unknown": _unknown,
    "ticket expired": _expired,
    "someone else's ticket": _not_yours,
    "hash does not verify": _hash_invalid,
    "type other than the ticket's": _type_mismatch,
    "completed too fast": _too_fast,
    "points other than the catalog's": _points,
}


@pytest.mark.parametrize("rule", list(RULES_400))
async def test_every_rule_answers_in_the_contracts_order(
    gateway: Client, mint: TokenMint, redis_client: aioredis.Redis, rule: str
) -> None:
    parts = gateway.app[components_key]
    prefix = parts.settings.redis_prefix
    player = Player(gateway, mint)
    broken = await RULES_400[rule](player, redis_client)
    action_id = broken.body["action_id"]

    revoked = revoked_session_key(prefix, player.sid)
    status = user_status_key(prefix, player.user_id)
    done = done_key(prefix, action_id)
    limit = Limit("update_user", str(player.user_id), parts.rate_policy.update_user)
    (limit_key,), _ = parts.limiter.script_input([limit])
    await redis_client.set(revoked, "1")
    await redis_client.set(status, "deleted")
    await redis_client.set(done, "1")
    far_future_us = (time.time() + 3600) * 1_000_000
    await redis_client.set(limit_key, f"{far_future_us:.0f}", px=3_600_000)
    someone_else = {**broken.body, "user_id": str(uuid.uuid4())}

    async def answer(body: dict[str, Any]) -> tuple[int, str]:
        status, problem = await player.submit(body)
        return status, problem.get("detail", "")

    resp = await gateway.post(UPDATE, json=someone_else)
    assert resp.status == 401  # no token at all
    assert await answer(someone_else) == (401, "this login session has been revoked")
    await redis_client.delete(revoked)
    assert await answer(someone_else) == (401, "this account no longer exists")
    await redis_client.set(status, "banned")
    assert await answer(someone_else) == (403, "this account is banned")
    await redis_client.delete(status)
    assert await answer(someone_else) == (403, "you can only update your own score")
    assert (await answer(broken.body))[0] == 409
    await redis_client.delete(done)
    assert (await answer(broken.body))[0] == 429
    await redis_client.delete(limit_key)
    code, detail = await answer(broken.body)
    assert (code, broken.detail in detail) == (400, True), detail
    # Nothing above was charged or claimed: the mended completion goes through, once.
    mended = await broken.mend()
    assert (await answer(mended))[0] == 202
    assert (await answer(mended))[0] == 409
