"""Produce to and consume from the real broker with the shared client settings."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest
from aiokafka.partitioner import DefaultPartitioner

from common.events import ScoreCommand, ScoreCommandEvent, Topics, encode
from common.kafka import key_partitioner, make_consumer, make_producer, started
from common.settings import CommonSettings
from common.tracing import configure_tracing, extract_context, inject_headers


async def test_roundtrip_keeps_key_payload_and_traceparent(
    common_settings: CommonSettings,
) -> None:
    from opentelemetry import trace

    configure_tracing("test")
    topics = Topics(common_settings.topic_prefix)
    now = datetime.now(UTC)
    cmd = ScoreCommand(
        action_id=uuid.uuid4(),
        user_id=uuid.uuid4(),
        action_type="quest",
        points=5,
        issued_at=now,
        accepted_at=now,
    )
    producer = make_producer(common_settings, client_id="test")
    consumer = make_consumer(
        common_settings, topics.commands, group_id=f"test-{uuid.uuid4()}", client_id="test"
    )
    tracer = trace.get_tracer("test")
    async with started(producer), started(consumer):
        with tracer.start_as_current_span("produce") as span:
            trace_id = span.get_span_context().trace_id
            await producer.send_and_wait(
                topics.commands,
                encode(ScoreCommandEvent.wrap(cmd, source="/test")),
                key=str(cmd.user_id).encode(),
                headers=inject_headers(),
            )
        async with asyncio.timeout(30):
            async for record in consumer:
                event = ScoreCommandEvent.model_validate_json(record.value)
                if event.data.action_id == cmd.action_id:
                    break
    assert record.key == str(cmd.user_id).encode()
    assert event.data == cmd
    ctx = trace.get_current_span(extract_context(record.headers)).get_span_context()
    assert ctx.trace_id == trace_id


@pytest.mark.parametrize("partitions", [1, 3, 12, 24])
def test_key_partitioner_places_keys_as_kafkas_default(partitions: int) -> None:
    all_partitions = list(range(partitions))
    default = DefaultPartitioner()
    for n in range(2000):
        key = str(uuid.UUID(int=n * 7919)).encode()
        expected = default(key, all_partitions, all_partitions)
        assert key_partitioner(key, all_partitions, all_partitions) == expected
        assert key_partitioner(key, all_partitions, all_partitions) == expected  # cached
    assert key_partitioner(None, all_partitions, [0]) == 0  # no key: an available partition


async def test_a_transactional_producer_shows_read_committed_consumers_only_commits(
    common_settings: CommonSettings,
) -> None:
    topic = Topics(common_settings.topic_prefix).changed
    key = str(uuid.uuid4()).encode()
    producer = make_producer(
        common_settings, client_id="test-txn", transactional_id=f"test-{uuid.uuid4()}"
    )
    consumer = make_consumer(common_settings, topic, group_id=None, client_id="test")
    async with started(producer), started(consumer):
        async with producer.transaction():
            await producer.send(topic, b"committed-1", key=key)
        await producer.begin_transaction()
        await (await producer.send(topic, b"aborted", key=key))
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(topic, b"committed-2", key=key)
        seen: list[bytes] = []
        async with asyncio.timeout(30):
            async for record in consumer:
                if record.key == key:
                    seen.append(record.value)
                    if len(seen) == 2:
                        break
    assert seen == [b"committed-1", b"committed-2"]
