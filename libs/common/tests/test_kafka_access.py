"""Kafka refuses whoever is not allowed: no anonymous client, no wrong password, and each
service user only what common.kafka_access grants it (on the real broker, with this run's ACLs).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    ClusterAuthorizationFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    KafkaError,
    TopicAuthorizationFailedError,
)

from common.events import Topics
from common.kafka import KafkaAuth, local_kafka_password
from common.kafka_access import (
    BROADCASTER,
    FLAGGED_TOPIC,
    GATEWAY,
    INTEGRATOR,
    SCORE,
    SERVICE_USERS,
    grants,
)
from testkit.env import TestEnv, provision_topics, unprovision_topics
from testkit.stack import infra

pytestmark = pytest.mark.integration

# Refusals of InitProducerId (no WRITE anywhere) or of the produce request (no WRITE here).
REFUSED_WRITE = (TopicAuthorizationFailedError, ClusterAuthorizationFailedError)


@pytest.fixture(scope="module")
async def env(test_env: TestEnv) -> AsyncIterator[TestEnv]:
    """The run's servers with topics of this module's own (granted the services' ACLs), so the
    records these tests write never reach other tests' readers."""
    if test_env.kafka_security_protocol == "PLAINTEXT":
        pytest.skip("the broker of this run has no authentication (testcontainers)")
    own = dataclasses.replace(test_env, topic_prefix=f"{test_env.topic_prefix}acl-")
    await provision_topics(own, own.topic_prefix, partitions=1)
    yield own
    await unprovision_topics(own, own.topic_prefix)


def _args(env: TestEnv, auth: KafkaAuth) -> dict[str, Any]:
    return {"bootstrap_servers": env.kafka_bootstrap, "request_timeout_ms": 5000, **auth.aiokafka()}


async def _produce(env: TestEnv, auth: KafkaAuth, topic: str) -> None:
    """One record to ``topic`` with an idempotent acks=all producer (as the services send)."""
    producer = AIOKafkaProducer(**_args(env, auth), enable_idempotence=True, acks="all")
    try:
        await producer.start()
        await producer.send_and_wait(topic, b"{}", key=b"k")
    finally:
        await producer.stop()


async def _consume(env: TestEnv, auth: KafkaAuth, topic: str, group: str | None) -> None:
    """Join ``group`` (or none) on ``topic`` and fetch once."""
    consumer = AIOKafkaConsumer(
        topic, **_args(env, auth), group_id=group, auto_offset_reset="earliest"
    )
    try:
        await consumer.start()
        await consumer.getmany(timeout_ms=1000)
    finally:
        await consumer.stop()


async def test_an_anonymous_client_is_refused(env: TestEnv) -> None:
    anonymous = KafkaAuth("PLAINTEXT", "", "", "")
    with pytest.raises(KafkaConnectionError):
        await _produce(env, anonymous, Topics(env.topic_prefix).commands)


@pytest.mark.parametrize(
    ("user", "password"), [(GATEWAY, "not-the-password"), ("mallory", "mallory")]
)
async def test_a_wrong_password_or_user_is_refused(
    env: TestEnv, user: str, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    forged = KafkaAuth("SASL_PLAINTEXT", "SCRAM-SHA-512", user, password)
    with pytest.raises(KafkaConnectionError):  # aiokafka: "Unable to bootstrap"
        await _produce(env, forged, Topics(env.topic_prefix).commands)
    assert "SaslAuthenticationFailed" in caplog.text  # refused by SCRAM, not unreachable


@pytest.mark.parametrize("user", [SCORE, BROADCASTER, INTEGRATOR])
async def test_only_the_gateway_writes_commands(env: TestEnv, user: str) -> None:
    commands = Topics(env.topic_prefix).commands
    await _produce(env, env.kafka_auth(GATEWAY), commands)
    with pytest.raises(REFUSED_WRITE):
        await _produce(env, env.kafka_auth(user), commands)


@pytest.mark.parametrize("user", [GATEWAY, BROADCASTER, INTEGRATOR])
async def test_only_score_writes_score_changed(env: TestEnv, user: str) -> None:
    changed = Topics(env.topic_prefix).changed
    await _produce(env, env.kafka_auth(SCORE), changed)
    with pytest.raises(REFUSED_WRITE):
        await _produce(env, env.kafka_auth(user), changed)


@pytest.mark.parametrize("user", [GATEWAY, BROADCASTER, INTEGRATOR])
async def test_only_score_writes_the_dlq_flags_and_closed_periods(env: TestEnv, user: str) -> None:
    topics = Topics(env.topic_prefix)
    for topic in (
        topics.dlq,
        env.topic_prefix + FLAGGED_TOPIC,
        topics.period_closed,
        topics.removals,
    ):
        with pytest.raises(REFUSED_WRITE):
            await _produce(env, env.kafka_auth(user), topic)


@pytest.mark.parametrize("stream", ["period_closed", "removals"])
async def test_integrators_read_closed_periods_and_removals_the_board_does_not(
    env: TestEnv, stream: str
) -> None:
    topic = getattr(Topics(env.topic_prefix), stream)
    await _produce(env, env.kafka_auth(SCORE), topic)
    await _consume(env, env.kafka_auth(INTEGRATOR), topic, f"{env.topic_prefix}integrator-x")
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume(env, env.kafka_auth(BROADCASTER), topic, None)


@pytest.mark.parametrize("user", [GATEWAY, BROADCASTER, INTEGRATOR])
async def test_only_score_reads_commands(env: TestEnv, user: str) -> None:
    commands = Topics(env.topic_prefix).commands
    await _consume(env, env.kafka_auth(SCORE), commands, None)
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume(env, env.kafka_auth(user), commands, None)


async def test_readers_of_score_changed_join_only_their_own_groups(env: TestEnv) -> None:
    prefix, changed = env.topic_prefix, Topics(env.topic_prefix).changed
    await _consume(env, env.kafka_auth(BROADCASTER), changed, f"{prefix}broadcaster-x")
    await _consume(env, env.kafka_auth(INTEGRATOR), changed, f"{prefix}integrator-x")
    # Joining the score service's group would take its partitions (and commit its offsets).
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(env, env.kafka_auth(INTEGRATOR), changed, f"{prefix}score")
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume(env, env.kafka_auth(BROADCASTER), changed, f"{prefix}integrator-x")


async def test_the_relay_transactional_id_is_the_score_services_alone(env: TestEnv) -> None:
    changed = Topics(env.topic_prefix).changed
    relay_id = f"{changed}.relay"
    for user, allowed in ((SCORE, True), (INTEGRATOR, False), (GATEWAY, False)):
        producer = AIOKafkaProducer(**_args(env, env.kafka_auth(user)), transactional_id=relay_id)
        try:
            if allowed:
                await producer.start()
                async with producer.transaction():
                    await producer.send_and_wait(changed, b"{}", key=b"k")
            else:
                with pytest.raises(KafkaError):
                    await producer.start()
        finally:
            await producer.stop()


async def test_other_prefixes_are_out_of_reach(env: TestEnv) -> None:
    # The grants name this run's topics exactly: another deployment's prefix gets nothing.
    elsewhere = Topics(f"other-{uuid.uuid4().hex[:6]}.").commands
    assert all(g.name.startswith(env.topic_prefix) for g in grants(env.topic_prefix))
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(env, env.kafka_auth(GATEWAY), elsewhere)


def test_the_local_broker_formats_the_passwords_the_services_default_to() -> None:
    assert set(SERVICE_USERS) | {"admin"} == set(infra.KAFKA_USERS)
    for user, password in infra.KAFKA_USERS.items():
        assert password == local_kafka_password(user)
