"""Has the score service applied every command the gateways sent before a given instant?

The period closer (score/closer.py) asks before it closes a period: a command accepted just
before the end may still be in Kafka (a backlog after a PostgreSQL outage, a slow replica), and
closing then would announce standings without it. The answer comes from Kafka itself, so it
holds across every replica: for each partition of the commands topic, the score group's
committed offset (committed only after the batch's transaction, so everything before it is
applied) must be past every record timestamped before the instant (``offsets_for_times``: the
first record at or after it; none: the partition's end). A group that never committed counts
as at the partition's start, which is where it would begin.

Record timestamps are the gateway producer's send time, which is at or after the command's
``accepted_at``; the caller's instant includes the grace that covers the gap.
"""

from __future__ import annotations

from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from common.events import Topics
from common.kafka import KafkaAuth, make_admin, make_consumer, started
from score.settings import Settings


class CommandProgress:
    """Reads the commands topic's offsets and the score group's commits (joins no group)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._topic = Topics(settings.topic_prefix).commands

    async def applied_before(self, instant: datetime) -> bool:
        """True when every command produced before ``instant`` has been applied."""
        # No group: it reads offsets and never a record it keeps; the commits are the score
        # group's, read with the admin API (reading them joins nothing).
        consumer = make_consumer(
            self._settings,
            self._topic,
            group_id=None,
            client_id=f"{self._settings.service_name}-closer",
        )
        admin = make_admin(self._settings.kafka_bootstrap, KafkaAuth.of(self._settings))
        async with started(consumer):
            await admin.start()
            try:
                return await self._caught_up(consumer, admin, instant)
            finally:
                await admin.close()

    async def _caught_up(
        self, consumer: AIOKafkaConsumer, admin: AIOKafkaAdminClient, instant: datetime
    ) -> bool:
        partitions = consumer.partitions_for_topic(self._topic)
        if not partitions:
            raise LookupError(f"topic {self._topic} has no partitions")
        tps = [TopicPartition(self._topic, p) for p in sorted(partitions)]
        consumer.pause(*tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        at = await consumer.offsets_for_times({tp: int(instant.timestamp() * 1000) for tp in tps})
        committed = await admin.list_consumer_group_offsets(self._settings.group_id, partitions=tps)
        for tp in tps:
            first_after = at[tp]
            needed = end[tp] if first_after is None else first_after.offset
            done = committed.get(tp)
            if max(done.offset if done is not None else 0, begin[tp]) < needed:
                return False
        return True
