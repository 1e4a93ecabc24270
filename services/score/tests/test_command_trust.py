"""Only gateway-signed commands at the catalog's price change a score (real Kafka, PostgreSQL).

Each forged, altered, unsigned or mispriced command lands in the DLQ with its reason and leaves
the score as it was; the honest command behind them, on the same partition, still applies.
"""

from __future__ import annotations

import base64
import uuid

import asyncpg
import pytest

from common.command_signing import CommandSigner, parse_key
from common.events import ScoreCommand, ScoreCommandEvent, Topics, encode
from score.settings import Settings
from services.score.tests.conftest import score_settings
from services.score.tests.support import (
    Sender,
    add_users,
    command,
    eventually,
    read_topic,
    running,
)
from services.score.tests.test_consumer import metric
from testkit.env import TestEnv

pytestmark = pytest.mark.integration

DEAD = "scoreboard_score_commands_dead_lettered_total"


def _key(kid: str, seed: bytes) -> str:
    return f"{kid}:{base64.b64encode(seed * (32 // len(seed))).decode()}"


OLD_KEY, NEW_KEY, ROGUE_KEY = _key("old", b"o"), _key("new", b"n"), _key("rogue", b"r")


def _value(cmd: ScoreCommand) -> bytes:
    return encode(ScoreCommandEvent.wrap(cmd, source="/gateway"))


async def _score(pg: asyncpg.Connection, user: uuid.UUID) -> int | None:
    score: int | None = await pg.fetchval("SELECT score FROM scores WHERE user_id = $1", user)
    return score


async def test_forged_altered_unsigned_and_mispriced_commands_change_no_score(
    settings: Settings, topics: Topics, sender: Sender, pg: asyncpg.Connection
) -> None:
    (alice,) = await add_users(pg, 1)
    key = str(alice).encode()
    rogue = CommandSigner(parse_key(ROGUE_KEY))

    forged = _value(command(alice, 900))
    signed = _value(command(alice, 5))
    altered = signed.replace(b'"points":5,', b'"points":500,')  # raised after signing
    assert altered != signed
    unsigned = _value(command(alice, 800))
    overpriced = _value(command(alice, 5).model_copy(update={"points": 500}))
    unknown_type = _value(command(alice, 5).model_copy(update={"action_type": "teleport"}))

    await sender.send_raw(forged, key, sign=False, headers=[rogue.header(key, forged)])
    await sender.send_raw(altered, key, sign=False, headers=[sender.signer.header(key, signed)])
    await sender.send_raw(unsigned, key, sign=False)
    await sender.send_raw(overpriced, key)  # validly signed: the catalog check stops it
    await sender.send_raw(unknown_type, key)
    await sender.send([command(alice, 7)])

    expected = {
        "unknown-key": forged,
        "bad-signature": altered,
        "unsigned": unsigned,
        "catalog-mismatch": overpriced,
        "unknown-action-type": unknown_type,
    }
    async with running(settings) as client:

        async def scored() -> bool:
            return await _score(pg, alice) == 7

        await eventually(scored)
        dlq = await read_topic(settings, topics.dlq, lambda r: len(r) >= len(expected))
        for reason in expected:
            assert await metric(client, DEAD, reason=reason) == 1, reason
        assert await metric(client, "scoreboard_score_commands_applied_total") == 1

    by_reason = {dict(r.headers)["x-error"].decode(): r for r in dlq}
    assert {k: (r.value, r.key) for k, r in by_reason.items()} == {
        k: (v, key) for k, v in expected.items()
    }
    details = {k: dict(r.headers)["x-error-detail"].decode() for k, r in by_reason.items()}
    assert "rogue" in details["unknown-key"]
    assert "500 points" in details["catalog-mismatch"]
    assert await pg.fetchval("SELECT count(*) FROM actions WHERE user_id = $1", alice) == 1


async def test_key_rotation_accepts_old_and_new_while_both_are_configured(
    test_env: TestEnv, topic_prefix: str, sender: Sender, pg: asyncpg.Connection
) -> None:
    (alice,) = await add_users(pg, 1)
    topics = Topics(topic_prefix)
    old, new = CommandSigner(parse_key(OLD_KEY)), CommandSigner(parse_key(NEW_KEY))

    async def send(signer: CommandSigner, points: int) -> None:
        cmd = command(alice, points)
        value, key = _value(cmd), str(alice).encode()
        await sender.send_raw(value, key, sign=False, headers=[signer.header(key, value)])

    async def score_is(n: int) -> None:
        async def check() -> bool:
            return await _score(pg, alice) == n

        await eventually(check)

    # Step 1 of the procedure: the score service accepts both; gateways still sign with old,
    # and, once switched (step 2), with new. Both apply.
    both = score_settings(test_env, topic_prefix, command_keys=f"{OLD_KEY},{NEW_KEY}")
    async with running(both):
        await send(old, 3)
        await send(new, 4)
        await score_is(7)

    # Step 3: old is dropped. A command still signed with it is refused; new ones apply.
    only_new = score_settings(test_env, topic_prefix, command_keys=NEW_KEY)
    async with running(only_new) as client:
        await send(old, 5)
        await send(new, 6)
        await score_is(13)

        # The batch's apply commits before its poison is dead-lettered and counted.
        async def refused_once() -> bool:
            return await metric(client, DEAD, reason="unknown-key") == 1

        await eventually(refused_once)

    [dead] = await read_topic(only_new, topics.dlq, lambda r: len(r) >= 1)
    assert dict(dead.headers)["x-error"] == b"unknown-key"
