"""The outbox relay: publishes ScoreChanged rows to Kafka in id order, then marks them sent.

One relay publishes at a time across all replicas: the holder of a PostgreSQL advisory lock
(tied to its connection, so a crashed replica releases it at once). The others wait as standbys
and take over within ``relay_standby_poll_s``. A single publisher keeps each user's events in
version order on the topic.

Delivery is at least once. A relay that stops between publishing and marking resends those rows
after a restart (or a takeover), byte for byte the same: same event id ``<user>:<version>``, so
consumers drop the duplicate. If Kafka fails part of a round, the whole round is retried, so a
consumer may also see a version again after a newer one; ScoreChanged carries the absolute
score and version, which is why consumers keep the highest version they have seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import murmur2

from common.backoff import Backoff, wait_or_stop
from common.events import Topics
from score.metrics import ScoreMetrics
from score.outbox import Outbox, OutboxRow
from score.settings import Settings
from score.store import NOTIFY_CHANNEL

log = structlog.get_logger(__name__)


class OutboxRelay:
    """Moves committed outbox rows to the ScoreChanged topic."""

    def __init__(
        self, producer: AIOKafkaProducer, settings: Settings, metrics: ScoreMetrics
    ) -> None:
        self._producer = producer
        self._settings = settings
        self._metrics = metrics
        self._topic = Topics(settings.topic_prefix).changed
        self.leading = False
        """Whether this replica holds the relay lock right now."""

    async def run(self, stop: asyncio.Event) -> None:
        """Relay until ``stop`` is set, reconnecting (and re-contending) after any failure."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while not stop.is_set():
            try:
                conn = await asyncpg.connect(
                    self._settings.postgres_dsn,
                    timeout=10,
                    command_timeout=30,
                    server_settings={"application_name": f"{self._settings.service_name}-relay"},
                )
            except Exception as exc:
                self._failed(exc, backoff)
                await wait_or_stop(stop, backoff.next_delay())
                continue
            try:
                await self._serve(Outbox(conn), conn, stop, backoff)
            except Exception as exc:
                self._failed(exc, backoff)
                await wait_or_stop(stop, backoff.next_delay())
            finally:
                self._step_down()
                # Closing the connection releases the advisory lock for a standby.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)

    async def _serve(
        self, outbox: Outbox, conn: asyncpg.Connection, stop: asyncio.Event, backoff: Backoff
    ) -> None:
        while not await outbox.try_lead():
            self._metrics.outbox_backlog.set(await outbox.backlog())
            if await wait_or_stop(stop, self._settings.relay_standby_poll_s):
                return
        self.leading = True
        self._metrics.relay_leader.set(1)
        log.info("relay_leading")
        wake = asyncio.Event()
        await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
        loop = asyncio.get_running_loop()
        next_purge = next_gauge = loop.time()
        while not stop.is_set():
            wake.clear()  # before reading: a commit after this point wakes the next round
            published = await self._publish_round(outbox)
            backoff.reset()
            if loop.time() >= next_gauge:
                self._metrics.outbox_backlog.set(await outbox.backlog())
                next_gauge = loop.time() + 1.0
            if published == self._settings.relay_batch:
                continue  # a full round: more are probably waiting
            if loop.time() >= next_purge:
                purged = await outbox.purge(self._settings.outbox_retention_s)
                if purged:
                    log.info("outbox_purged", rows=purged)
                next_purge = loop.time() + self._settings.outbox_purge_interval_s
            await _wait_any(wake, stop, self._settings.relay_poll_ms / 1000)

    async def _publish_round(self, outbox: Outbox) -> int:
        rows = await outbox.unsent(self._settings.relay_batch)
        if not rows:
            return 0
        partitions = len(await self._producer.partitions_for(self._topic))
        by_partition: dict[int, list[OutboxRow]] = {}
        for r in rows:
            by_partition.setdefault(key_partition(r.key, partitions), []).append(r)
        # Whole record batches per partition, in id order: far less work per event than one
        # send() each. The idempotent producer keeps one batch in flight per partition, so the
        # events of a partition (and of each user) land in the order they were appended.
        acks = []
        for partition, events in by_partition.items():
            batch = self._producer.create_batch()
            for r in events:
                if batch.append(key=r.key, value=r.payload, timestamp=None, headers=r.headers):
                    continue
                acks.append(
                    await self._producer.send_batch(batch, self._topic, partition=partition)
                )
                batch = self._producer.create_batch()
                if not batch.append(key=r.key, value=r.payload, timestamp=None, headers=r.headers):
                    raise ValueError(f"outbox row {r.id} does not fit in a Kafka record batch")
            acks.append(await self._producer.send_batch(batch, self._topic, partition=partition))
        await _all_acked(acks)
        await outbox.mark_sent([r.id for r in rows])
        self._metrics.relay_published.inc(len(rows))
        return len(rows)

    def _step_down(self) -> None:
        if self.leading:
            log.info("relay_stepped_down")
        self.leading = False
        self._metrics.relay_leader.set(0)

    def _failed(self, exc: Exception, backoff: Backoff) -> None:
        self._metrics.failures.labels("relay").inc()
        log.warning(
            "transient_failure",
            stage="relay",
            error=repr(exc),
            attempt=backoff.attempt + 1,
            exc_info=exc if backoff.attempt == 0 else None,
        )


async def _all_acked(acks: list[asyncio.Future[object]]) -> None:
    """Wait for every ack; raise the first failure, after all are settled (none left unread)."""
    for result in await asyncio.gather(*acks, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result


@functools.lru_cache(maxsize=65536)
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for ``key`` (murmur2, like the Java client).

    aiokafka computes murmur2 in pure Python, slowly; a user's key always maps to the same
    partition, so the answer is cached.
    """
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partitions


async def _wait_any(first: asyncio.Event, second: asyncio.Event, seconds: float) -> None:
    """Return when either event is set, or after ``seconds``."""
    waiters = [asyncio.ensure_future(first.wait()), asyncio.ensure_future(second.wait())]
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
