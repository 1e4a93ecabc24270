"""The score-update contract, status by status, through the real app, Redis and Kafka."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import redis.asyncio as aioredis

from common.command_signing import CommandVerifier
from common.events import ScoreCommandEvent
from common.health import registry_key
from common.kafka_access import delete_acls, ensure_acls, grants
from common.keyspace import done_key, ticket_key
from common.tracing import configure_tracing
from gateway.components import components_key
from gateway.settings import Settings
from services.gateway.tests.support import (
    CATALOG,
    UPDATE,
    Client,
    MakeGateway,
    Player,
    TokenMint,
    command_records,
)
from testkit.env import TestEnv as SliceEnv

SCHEMAS = Path(__file__).resolve().parents[3] / "schemas"


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Client:
    """A gateway whose catalog has instant actions (and one that takes a minute)."""
    return await make_gateway(action_catalog=CATALOG)


@pytest.fixture
def player(gateway: Client, mint: TokenMint) -> Player:
    return Player(gateway, mint)


async def test_catalog_is_public(gateway: Client) -> None:
    resp = await gateway.get("/api/actions/types")
    assert resp.status == 200
    assert await resp.json() == [
        {"action_type": name, "max_open": 1, **spec} for name, spec in sorted(CATALOG.items())
    ]


async def test_ticket_is_signed_and_stored_with_a_ttl(
    gateway: Client, player: Player, redis_client: aioredis.Redis
) -> None:
    ticket = await player.ticket("quest")
    assert ticket["points"] == 50
    assert ticket["action_type"] == "quest"
    assert ticket["action_hash"].startswith("t1.")
    uuid.UUID(ticket["action_id"])
    prefix = gateway.app[components_key].settings.redis_prefix
    ttl = await redis_client.ttl(ticket_key(prefix, ticket["action_id"]))
    assert 590 <= ttl <= 600


@pytest.mark.parametrize(
    "body", [{"action_type": "nope"}, {"action_type": "tap", "points": 5}, {}, {"action_type": 3}]
)
async def test_bad_ticket_requests_are_400(player: Player, body: dict[str, Any]) -> None:
    resp = await player.client.post("/api/actions", json=body, headers=player.auth)
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"


async def test_accepted_command_is_on_kafka_with_catalog_points(
    player: Player,
    test_env: SliceEnv,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As __main__ does with ids but no exporter; then the trace context reaches Kafka.
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    configure_tracing("gateway")
    body = await player.completion("quest")
    status, doc = await player.submit({**body, "user_id": str(player.user_id), "points": 50})
    assert status == 202
    assert doc == {"status": "accepted", "action_id": body["action_id"], "points": 50}

    [record] = await command_records(test_env, body["action_id"])
    assert record.key == str(player.user_id).encode()
    value = json.loads(record.value)
    schema = json.loads((SCHEMAS / "score-command.v1.json").read_text())
    jsonschema.validate(value, schema)
    event = ScoreCommandEvent.model_validate(value)
    assert event.source == "https://scoreboard.dev/services/gateway"
    assert event.dataschema.endswith("/schemas/score-command.v1.json#/$defs/ScoreCommand")
    assert event.subject == str(player.user_id)
    assert (event.data.user_id, event.data.action_type) == (player.user_id, "quest")
    assert event.data.points == 50
    assert event.data.accepted_at >= event.data.issued_at
    assert any(k == "traceparent" for k, _ in record.headers)
    assert ("content-type", b"application/cloudevents+json") in record.headers
    # Signed over the exact key and value with the run's key, as the score service requires.
    verifier = CommandVerifier(Settings.load(**test_env.overrides()).command_keys)
    assert verifier.check(record.key, record.value, record.headers) == "test"

    prefix = player.client.app[components_key].settings.redis_prefix
    # Published (the broadcaster turns it into "applied" and drops the ticket; see
    # common.keyspace).
    marker = cast(bytes | None, await redis_client.get(done_key(prefix, body["action_id"])))
    assert marker is not None
    assert marker.startswith(b"p:")
    assert await redis_client.ttl(done_key(prefix, body["action_id"])) > 6 * 24 * 3600
    assert await redis_client.exists(ticket_key(prefix, body["action_id"])) == 1


async def test_points_are_never_taken_from_the_client(player: Player) -> None:
    body = await player.completion("tap")
    status, doc = await player.submit({**body, "points": 1000})
    assert status == 400
    assert "points" in doc["detail"]
    status, doc = await player.submit(body)
    assert (status, doc["points"]) == (202, 1)


async def test_401_without_a_token(player: Player) -> None:
    body = await player.completion()
    resp = await player.client.post(UPDATE, json=body)
    assert resp.status == 401


async def test_403_for_another_users_id_and_for_a_banned_user(
    player: Player, redis_client: aioredis.Redis
) -> None:
    body = await player.completion()
    status, _ = await player.submit({**body, "user_id": str(uuid.uuid4())})
    assert status == 403
    prefix = player.client.app[components_key].settings.redis_prefix
    await redis_client.set(f"{prefix}user-status:{player.user_id}", "banned")
    status, _ = await player.submit(body)
    assert status == 403


@pytest.mark.parametrize(
    ("key", "value", "status", "detail"),
    [
        ("revoked-session:{sid}", "1", 401, "this login session has been revoked"),
        ("user-status:{sub}", "deleted", 401, "this account no longer exists"),
        ("user-status:{sub}", "banned", 403, "this account is banned"),
    ],
)
async def test_account_state_comes_before_every_other_update_check(
    player: Player,
    redis_client: aioredis.Redis,
    key: str,
    value: str,
    status: int,
    detail: str,
) -> None:
    completed = await player.completion()
    assert (await player.submit(completed))[0] == 202
    fresh = await player.completion()
    prefix = player.client.app[components_key].settings.redis_prefix
    await redis_client.set(prefix + key.format(sid=player.sid, sub=player.user_id), value)
    for body in (
        fresh,
        completed,  # would be 409
        {**fresh, "action_hash": "t1.00"},  # would be 400
        {**fresh, "user_id": str(uuid.uuid4())},  # would be 403 (someone else's id)
        {"action_id": "not-a-uuid"},  # would be 400 (invalid body)
    ):
        answer, problem = await player.submit(body)
        assert (answer, problem["detail"]) == (status, detail), body
    await redis_client.delete(prefix + key.format(sid=player.sid, sub=player.user_id))
    assert (await player.submit(fresh))[0] == 202


async def test_a_retry_waits_for_a_claim_in_flight_and_takes_over_a_dead_one(
    make_gateway: MakeGateway, mint: TokenMint, test_env: SliceEnv, redis_client: aioredis.Redis
) -> None:
    """409 means recorded: a retry that finds its action claimed by another gateway and not yet
    published waits; once the claim is stale (that gateway died between the claim and Kafka's
    acknowledgement) the retry takes it over and publishes itself, which the score service
    deduplicates by action id. Published or applied actions are a 409 at once."""
    client = await make_gateway(
        action_catalog=CATALOG, publish_timeout_s=1.0, claim_stale_after_s=1.5
    )
    player = Player(client, mint)
    prefix = client.app[components_key].settings.redis_prefix
    body = await player.completion("quest")
    done = done_key(prefix, body["action_id"])
    now_ms = round(time.time() * 1000)
    await redis_client.set(done, f"c:{now_ms}:a-dead-gateway", ex=3600)
    started = time.monotonic()
    assert (await player.submit(body))[0] == 202
    waited = time.monotonic() - started
    assert 1.0 <= waited < 3.0, waited  # waited for the claim to go stale, then took over
    assert len(await command_records(test_env, body["action_id"])) == 1
    marker = cast(bytes | None, await redis_client.get(done))
    assert marker is not None
    assert marker.startswith(b"p:")  # published by the retry
    assert (await player.submit(body))[0] == 409  # recorded: answered at once

    # A claim that gets published while the retry waits: 409 as soon as it is.
    body = await player.completion("quest")
    done = done_key(prefix, body["action_id"])
    await redis_client.set(done, f"c:{round(time.time() * 1000)}:a-slow-gateway", ex=3600)
    retry = asyncio.create_task(player.submit(body))
    await asyncio.sleep(0.3)
    assert not retry.done()
    await redis_client.set(done, f"p:{round(time.time() * 1000)}", ex=3600)
    started = time.monotonic()
    assert (await retry)[0] == 409
    assert time.monotonic() - started < 0.5
    assert await command_records(test_env, body["action_id"], wait=False) == []


async def test_releasing_a_claim_never_undoes_a_confirmation(
    player: Player, redis_client: aioredis.Redis
) -> None:
    claims = player.client.app[components_key].claims
    body = await player.completion()
    action_id = uuid.UUID(body["action_id"])
    claimed_at = datetime.now(UTC)
    assert await claims.claim(action_id, claimed_at)
    assert not await claims.claim(action_id, claimed_at)  # once
    done = claims.key(action_id)
    await redis_client.set(done, "1")  # the broadcaster confirmed it meanwhile
    await claims.release(action_id, claimed_at, player.user_id, "tap")
    assert await redis_client.get(done) == b"1"
    await redis_client.set(done, claims.value(claimed_at))
    await claims.release(action_id, claimed_at, player.user_id, "tap")
    assert await redis_client.exists(done) == 0


async def test_409_for_a_completed_action_even_with_other_faults(player: Player) -> None:
    body = await player.completion()
    assert (await player.submit(body))[0] == 202
    assert (await player.submit(body))[0] == 409
    # 409 is checked before the hash (400) ...
    assert (await player.submit({**body, "action_hash": "t1.00"}))[0] == 409
    # ... and 403 before 409.
    assert (await player.submit({**body, "user_id": str(uuid.uuid4())}))[0] == 403


async def test_400_for_tickets_that_do_not_match(
    player: Player, mint: TokenMint, redis_client: aioredis.Redis
) -> None:
    body = await player.completion("tap")
    other = Player(player.client, mint)
    prefix = player.client.app[components_key].settings.redis_prefix
    flipped = body["action_hash"][:-1] + ("0" if body["action_hash"][-1] != "0" else "1")
    cases: dict[str, tuple[Player, dict[str, Any]]] = {
        "unknown action": (player, {**body, "action_id": str(uuid.uuid4())}),
        "someone else's ticket": (other, body),
        "flipped hash": (player, {**body, "action_hash": flipped}),
        "hash from an unknown key": (
            player,
            {**body, "action_hash": "k9" + body["action_hash"][2:]},
        ),
        "not a hash": (player, {**body, "action_hash": "garbage"}),
        "type mismatch": (player, {**body, "action_type": "quest"}),
        "extra field": (player, {**body, "bonus": True}),
        "points as a string": (player, {**body, "points": "1"}),
    }
    for name, (who, attempt) in cases.items():
        status, doc = await who.submit(attempt)
        assert status == 400, name
        assert doc["status"] == 400
    # An expired ticket (its expiry passed before Redis dropped it).
    ticket = json.loads(await redis_client.get(ticket_key(prefix, body["action_id"])) or b"{}")
    expired = {**ticket, "expires_at": "2000-01-01T00:00:00.000Z", "expires_ms": 946684800000}
    await redis_client.set(ticket_key(prefix, body["action_id"]), json.dumps(expired))
    assert (await player.submit(body))[0] == 400
    await redis_client.set(ticket_key(prefix, body["action_id"]), json.dumps(ticket))
    # None of that counted: the honest completion still goes through, once.
    assert (await player.submit(body))[0] == 202


@pytest.mark.parametrize(
    ("tamper", "detail"),
    [
        ({"user_id": str(uuid.uuid4())}, "this action was issued to another user"),
        # The hash was issued for the stored type: a stored ticket of another type no longer
        # matches it (hash before type, the contract's order; the two implementations this
        # script replaced disagreed here, the one in Python said so too).
        ({"action_type": "quest"}, "action_hash does not verify"),
        ({"expires_ms": 946_684_800_000}, "unknown or expired action_id"),
    ],
)
async def test_400s_decided_in_the_redemption_script(
    player: Player, redis_client: aioredis.Redis, tamper: dict[str, Any], detail: str
) -> None:
    """A completion whose hash verifies is checked and claimed by one script; a stored ticket
    that does not match it is refused there, in the contract's order, and stays redeemable."""
    body = await player.completion("tap")
    key = ticket_key(player.client.app[components_key].settings.redis_prefix, body["action_id"])
    original = await redis_client.get(key)
    assert original is not None
    await redis_client.set(key, json.dumps({**json.loads(original), **tamper}))
    status, doc = await player.submit(body)
    assert (status, detail in doc["detail"]) == (400, True), doc
    await redis_client.set(key, original)
    assert (await player.submit(body))[0] == 202


async def test_actions_without_a_minimum_duration_tolerate_clock_skew(
    player: Player, redis_client: aioredis.Redis
) -> None:
    """A ticket issued by a replica whose clock runs a little ahead is not "too fast"."""
    body = await player.completion("tap")
    key = ticket_key(player.client.app[components_key].settings.redis_prefix, body["action_id"])
    ticket = json.loads(await redis_client.get(key) or b"{}")
    ticket["issued_ms"] += 1000
    await redis_client.set(key, json.dumps(ticket))
    assert (await player.submit(body))[0] == 202


async def test_400_for_points_that_differ_from_the_catalog(player: Player) -> None:
    body = await player.completion("quest")
    status, doc = await player.submit({**body, "points": 49})
    assert status == 400
    assert "points must be 50" in doc["detail"]
    assert (await player.submit({**body, "points": 50}))[0] == 202


async def test_400_when_completed_faster_than_possible(player: Player) -> None:
    status, doc = await player.submit(await player.completion("slow"))
    assert status == 400
    assert "at least 60000 ms" in doc["detail"]


@pytest.mark.parametrize("prefer", ["wait=0", "wait=11", "wait=abc", "wait", "wait=1.5"])
async def test_400_for_an_invalid_wait_preference(player: Player, prefer: str) -> None:
    status, _ = await player.submit(await player.completion(), {"Prefer": prefer})
    assert status == 400


async def test_100_concurrent_submissions_of_one_ticket_count_once(
    make_gateway: MakeGateway, mint: TokenMint, test_env: SliceEnv
) -> None:
    client = await make_gateway(
        action_catalog=CATALOG, update_burst_per_user=1000, update_burst_per_address=1000
    )
    player = Player(client, mint)
    body = await player.completion()
    results = await asyncio.gather(*(player.submit(body) for _ in range(100)))
    assert Counter(status for status, _ in results) == {202: 1, 409: 99}
    assert len(await command_records(test_env, body["action_id"])) == 1


async def test_kafka_down_is_503_and_the_same_request_then_succeeds(
    make_gateway: MakeGateway, mint: TokenMint, test_env: SliceEnv, unused_tcp_port: int
) -> None:
    working = await make_gateway(action_catalog=CATALOG)
    prefix = working.app[components_key].settings.redis_prefix
    broken = await make_gateway(
        wait_kafka=False,
        action_catalog=CATALOG,
        redis_prefix=prefix,
        kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}",
    )
    player = Player(broken, mint)
    body = await player.completion()
    resp = await broken.post(UPDATE, json=body, headers=player.auth)
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert "retry" in (await resp.json(content_type=None))["detail"]
    ready = await broken.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["kafka"].startswith("failed")
    assert await command_records(test_env, body["action_id"], wait=False) == []

    resp = await working.post(UPDATE, json=body, headers=player.auth)
    assert resp.status == 202
    assert len(await command_records(test_env, body["action_id"])) == 1


async def test_prefer_wait_returns_the_applied_score(
    player: Player, test_env: SliceEnv, redis_client: aioredis.Redis
) -> None:
    body = await player.completion("quest")
    submitting = asyncio.create_task(player.submit(body, {"Prefer": "respond-async, wait=5"}))
    await command_records(test_env, body["action_id"])  # published, so the waiter is registered
    prefix = player.client.app[components_key].settings.redis_prefix
    # An unrelated notice first: it must not wake this request.
    unrelated = {
        "action_id": str(uuid.uuid4()),
        "user_id": str(uuid.uuid4()),
        "username": "someone",
        "score": 1,
        "version": 1,
        "rank": 1,
    }
    await redis_client.publish(f"{prefix}applied", json.dumps(unrelated))
    notice = {
        "action_id": body["action_id"],
        "user_id": str(player.user_id),
        "username": "player",
        "score": 150,
        "version": 3,
        "rank": 2,
    }
    await redis_client.publish(f"{prefix}applied", json.dumps(notice))
    status, doc = await submitting
    assert status == 200
    assert doc == {
        "status": "applied",
        "action_id": body["action_id"],
        "user_id": str(player.user_id),
        "score": 150,
        "rank": 2,
    }


async def test_the_applied_channel_is_subscribed_only_while_requests_wait(
    make_gateway: MakeGateway, mint: TokenMint, test_env: SliceEnv, redis_client: aioredis.Redis
) -> None:
    client = await make_gateway(action_catalog=CATALOG, applied_linger_s=0.5)
    player = Player(client, mint)
    channel = f"{client.app[components_key].settings.redis_prefix}applied"

    async def subscribers() -> int:
        counts = dict(await redis_client.pubsub_numsub(channel))
        return int(counts.get(channel.encode(), 0))

    assert (await player.submit(await player.completion()))[0] == 202  # no wait: no subscription
    assert await subscribers() == 0
    body = await player.completion()
    submitting = asyncio.create_task(player.submit(body, {"Prefer": "wait=5"}))
    await command_records(test_env, body["action_id"])  # published: subscribed before that
    assert await subscribers() == 1
    notice = {
        "action_id": body["action_id"],
        "user_id": str(player.user_id),
        "username": "player",
        "score": 1,
        "version": 1,
        "rank": 1,
    }
    await redis_client.publish(channel, json.dumps(notice))
    assert (await submitting)[0] == 200
    async with asyncio.timeout(10):  # unsubscribed once nobody has waited for the linger time
        while await subscribers():  # noqa: ASYNC110 - polling Redis
            await asyncio.sleep(0.1)


async def test_prefer_wait_gives_202_when_not_applied_in_time(player: Player) -> None:
    body = await player.completion()
    started = time.monotonic()
    resp = await player.client.post(UPDATE, json=body, headers={**player.auth, "Prefer": "wait=1"})
    elapsed = time.monotonic() - started
    assert resp.status == 202
    assert resp.headers["Preference-Applied"] == "wait=1"
    assert (await resp.json())["status"] == "accepted"
    assert 0.9 <= elapsed < 2.5


async def test_no_ack_in_time_is_503_and_the_claim_is_released(
    make_gateway: MakeGateway, mint: TokenMint, test_env: SliceEnv
) -> None:
    working = await make_gateway(action_catalog=CATALOG)
    prefix = working.app[components_key].settings.redis_prefix
    # A connected producer whose topic does not exist: Kafka never acknowledges the send. (The
    # gateway may write it, as its ACLs grant: otherwise Kafka refuses at once, not too late.)
    missing = f"missing-{uuid.uuid4().hex[:8]}."
    await ensure_acls(test_env.kafka_bootstrap, test_env.kafka_auth(), grants(missing))
    stalled = await make_gateway(
        action_catalog=CATALOG,
        redis_prefix=prefix,
        topic_prefix=missing,
        publish_timeout_s=0.5,
    )
    player = Player(stalled, mint)
    body = await player.completion()
    started = time.monotonic()
    try:
        status, doc = await player.submit(body)
    finally:
        await delete_acls(test_env.kafka_bootstrap, test_env.kafka_auth(), grants(missing))
    assert status == 503, doc
    assert time.monotonic() - started < 3
    registry = stalled.app[registry_key]
    assert (
        registry.get_sample_value(
            "scoreboard_gateway_publish_failures_total", {"reason": "timeout"}
        )
        == 1
    )

    resp = await working.post(UPDATE, json=body, headers=player.auth)
    assert resp.status == 202
    assert len(await command_records(test_env, body["action_id"])) == 1
