"""Integrators' view of the topics: the official CloudEvents SDK decodes the real records, and the
example consumer (examples/score_consumer.py) keeps correct standings from the real topic."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.v1 import kafka as ce_kafka_v1

from common.command_signing import CommandSigner, parse_key
from common.events import (
    GATEWAY_SOURCE,
    SCORE_SOURCE,
    STRUCTURED_CONTENT_TYPE,
    STRUCTURED_MODE_HEADER,
    PlayerFlagged,
    PlayerFlaggedEvent,
    ScoreCommand,
    ScoreCommandEvent,
    Topics,
    encode,
    utcnow,
)
from examples.score_consumer import Standings
from testkit.env import TestEnv
from tests.e2e.harness import System, complete_action, register_and_login

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "score_consumer.py"
Record = Any  # aiokafka's ConsumerRecord, which has no type hints


def _name() -> str:
    return f"ce{uuid.uuid4().hex[:12]}"


async def _records(
    env: TestEnv, topic: str, match: Callable[[Record], bool], count: int = 1
) -> list[Record]:
    """Records of ``topic`` (from the beginning, read_committed) until ``count`` match."""
    consumer = AIOKafkaConsumer(
        topic,
        **env.kafka_auth().aiokafka(),
        bootstrap_servers=env.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    found: list[Record] = []
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    found += [r for r in records if match(r)]
    finally:
        await consumer.stop()
    return found


def _about(user_id: str) -> Callable[[Record], bool]:
    return lambda r: r.key == user_id.encode()


def _message(record: Record) -> ce_kafka.KafkaMessage:
    return ce_kafka.KafkaMessage(dict(record.headers), record.key, record.value or b"")


def _schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((REPO / "schemas" / f"{name}.json").read_text())
    return schema


def _check_structured(record: Record, kind: str, source: str, schema: str) -> Any:
    """The record as the SDK decodes it, checked against the contract."""
    # The Kafka binding: structured mode is announced by the content-type header.
    assert dict(record.headers)["content-type"] == STRUCTURED_CONTENT_TYPE.encode()
    event = ce_kafka.from_structured(_message(record), JSONFormat())
    assert ce_kafka.from_kafka(_message(record), JSONFormat()).get_id() == event.get_id()
    assert event.get_specversion() == "1.0"
    assert event.get_type() == kind
    assert event.get_source() == source
    assert event.get_datacontenttype() == "application/json"
    assert (
        event.get_dataschema()
        == f"https://scoreboard.dev/schemas/{schema}.json#/$defs/"
        + (_schema(schema)["properties"]["data"]["$ref"].rpartition("/")[2])
    )
    assert event.get_subject() == event.get_extension("partitionkey")  # the key is the user
    jsonschema.validate(json.loads(record.value or b""), _schema(schema))
    # The SDK's older API (cloudevents.v1.kafka) reads them too.
    legacy = ce_kafka_v1.from_structured(
        ce_kafka_v1.KafkaMessage(dict(record.headers), record.key, record.value or b"")
    )
    assert (legacy["type"], legacy["id"], legacy["source"]) == (
        kind,
        event.get_id(),
        source,
    )
    return event


async def test_the_sdk_decodes_commands_and_changes_from_the_real_topics(
    system: System, http: aiohttp.ClientSession, e2e_env: TestEnv
) -> None:
    player = await register_and_login(http, system.gateway, _name())
    status, body = await complete_action(http, system.gateway, player, "quest", wait_s=10)
    assert status == 200, body
    topics = Topics(e2e_env.topic_prefix)

    [command] = await _records(e2e_env, topics.commands, _about(player.user_id))
    event = _check_structured(
        command, "scoreboard.score.command.v1", GATEWAY_SOURCE, "score-command.v1"
    )
    assert event.get_id() == body["action_id"]
    assert event.get_data()["points"] == 50

    [changed] = await _records(e2e_env, topics.changed, _about(player.user_id))
    event = _check_structured(
        changed, "scoreboard.score.changed.v1", SCORE_SOURCE, "score-changed.v1"
    )
    assert event.get_id() == f"{player.user_id}:1"
    assert event.get_data()["score"] == 50
    # No traceparent here: tracing is off unless OTEL_* configures it (common.tracing).


async def test_the_sdk_decodes_a_dead_lettered_command(system: System, e2e_env: TestEnv) -> None:
    """A gateway-signed command that can never apply (its user does not exist) reaches the DLQ
    with its original headers, so it is still a structured CloudEvent."""
    topics = Topics(e2e_env.topic_prefix)
    stranger = uuid.uuid4()
    now = utcnow()
    command = ScoreCommand(
        action_id=uuid.uuid4(),
        user_id=stranger,
        action_type="quest",
        points=50,
        issued_at=now,
        accepted_at=now,
    )
    raw = encode(ScoreCommandEvent.wrap(command, source=GATEWAY_SOURCE))
    key = str(stranger).encode()
    signer = CommandSigner(parse_key(e2e_env.command_keys))
    producer = AIOKafkaProducer(
        **e2e_env.kafka_auth().aiokafka(), bootstrap_servers=e2e_env.kafka_bootstrap
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            topics.commands,
            raw,
            key=key,
            headers=[STRUCTURED_MODE_HEADER, signer.header(key, raw)],
        )
    finally:
        await producer.stop()
    [dead] = await _records(e2e_env, topics.dlq, _about(str(stranger)))
    assert dict(dead.headers)["x-error"] == b"unknown-user"
    _check_structured(dead, "scoreboard.score.command.v1", GATEWAY_SOURCE, "score-command.v1")


async def test_the_sdk_decodes_a_player_flag_as_the_flagger_publishes_it(
    e2e_env: TestEnv,
) -> None:
    """PlayerFlagged, sent as score.flags sends it (raising a real flag takes a population of
    players: services/score/tests/test_flags.py does that, and checks the header)."""
    user = str(uuid.uuid4())
    flag = PlayerFlagged(
        flag_id=uuid.uuid4(),
        user_id=uuid.UUID(user),
        username="mallory",
        rate=98.5,
        z=11.2,
        median=12.0,
        mad=4.5,
        active_players=51,
        tau_s=5.0,
        flagged_at=utcnow(),
    )
    topic = Topics(e2e_env.topic_prefix).flagged
    producer = AIOKafkaProducer(
        **e2e_env.kafka_auth().aiokafka(), bootstrap_servers=e2e_env.kafka_bootstrap
    )
    await producer.start()
    try:
        await producer.send_and_wait(
            topic,
            encode(PlayerFlaggedEvent.wrap(flag, source=SCORE_SOURCE)),
            key=user.encode(),
            headers=[STRUCTURED_MODE_HEADER],
        )
    finally:
        await producer.stop()
    [record] = await _records(e2e_env, topic, _about(user))
    event = _check_structured(
        record, "scoreboard.player.flagged.v1", SCORE_SOURCE, "player-flagged.v1"
    )
    assert event.get_id() == str(flag.flag_id)


def test_standings_apply_each_version_once() -> None:
    standings = Standings()
    user = str(uuid.uuid4())

    def change(version: int, score: int) -> dict[str, Any]:
        return {"user_id": user, "username": "ada", "score": score, "version": version}

    assert standings.apply(change(1, 10))
    assert standings.apply(change(2, 15))
    assert not standings.apply(change(2, 15))  # a replay
    assert not standings.apply(change(1, 10))  # an older one, late
    assert standings.players[user].score == 15
    assert standings.duplicates == 2


@pytest.mark.timeout(180)
async def test_the_example_consumer_follows_the_real_topic_and_forgets_deleted_players(
    system: System, http: aiohttp.ClientSession, e2e_env: TestEnv
) -> None:
    ada = await register_and_login(http, system.gateway, _name())
    bob = await register_and_login(http, system.gateway, _name())
    for player, kind in ((ada, "quest"), (ada, "tap"), (bob, "quest")):
        status, body = await complete_action(http, system.gateway, player, kind, wait_s=10)
        assert status == 200, body
    auth = e2e_env.kafka_auth()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        f"--bootstrap={e2e_env.kafka_bootstrap}",
        f"--topic={Topics(e2e_env.topic_prefix).changed}",
        f"--group=example-{uuid.uuid4().hex[:8]}",
        f"--username={auth.username}",
        f"--password={auth.password}",
        f"--api={system.gateway}",
        "--reconcile=1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.stdout is not None
    latest: dict[str, dict[str, Any]] = {}
    removed: set[str] = set()

    async def read_until(done: Callable[[], bool]) -> None:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            while not done():
                line = await proc.stdout.readline()
                assert line, "the example consumer exited"
                doc = json.loads(line)
                if doc.get("removed"):
                    removed.add(doc["user_id"])
                else:
                    assert doc["version"] > latest.get(doc["user_id"], {"version": 0})["version"]
                    latest[doc["user_id"]] = doc

    try:
        await read_until(lambda: ada.user_id in latest and bob.user_id in latest)
        await read_until(lambda: latest[ada.user_id]["version"] == 2)
        assert (latest[ada.user_id]["score"], latest[bob.user_id]["score"]) == (51, 50)
        delete = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "auth",
            "delete-user",
            bob.username,
            env={**os.environ, **e2e_env.environ()},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(delete.communicate(), timeout=60)
        assert delete.returncode == 0, err.decode()
        await read_until(lambda: bob.user_id in removed)
        assert ada.user_id not in removed
    finally:
        proc.terminate()
        _, err = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert b"Traceback" not in err, err.decode()
