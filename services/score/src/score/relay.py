"""The outbox relay: publishes outbox rows to Kafka exactly once, in id order.

Rows are ScoreChanged events and closed periods' final standings (score/closer.py); each goes to
its stream's topic (score/outbox.py), in the same transactions.

One relay publishes at a time across all replicas: the holder of a PostgreSQL advisory lock
(tied to its connection, so a crashed replica releases it at once). The others wait as standbys
and take over within ``relay_standby_poll_s``. A single publisher keeps each user's events in
version order on the topic.

Exactly once, as a read_committed consumer sees the topic (the technique of Kafka Connect's
exactly-once source connectors, KIP-618):

- Each leadership term (every time the lock is taken, by any process) starts a new transactional
  producer whose id, :func:`relay_transactional_id`, is the same for every replica of the
  deployment. Its start (InitProducerId) fences the previous leader's producer and settles that
  leader's transactions: one being committed completes, one still open is aborted. A zombie
  leader (lost its lock, still running) fails its next send or commit with ProducerFenced.
- Before publishing anything the new leader marks sent the rows its predecessor committed to
  Kafka but did not mark (each record carries its outbox id; see recovery.py).
- A round is one Kafka transaction: the unsent rows, as record batches per partition, then the
  commit, then the rows are marked sent. A failure before the commit aborts the transaction
  (read_committed consumers never see its records). Any failure ends the term: the producer is
  closed, the connection too (so the lock goes), and the relay contends again after a backoff;
  the next term, often this same relay's, recovers and retries the round.

Records of aborted transactions stay in the log: read_uncommitted consumers see them, and may
thus see an event twice; ScoreChanged carries the absolute score and version, so keeping the
highest version per user still gives them the right board.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Literal

import asyncpg
import structlog
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import ProducerFenced
from aiokafka.partitioner import murmur2

from common.backoff import Backoff, wait_or_stop
from common.events import Topics
from common.kafka import make_producer
from score.metrics import ScoreMetrics
from score.outbox import Outbox, OutboxRow, stream_topics
from score.recovery import committed_unsent
from score.settings import Settings
from score.store import NOTIFY_CHANNEL

log = structlog.get_logger(__name__)

# One record batch per partition per round, mostly: a transaction adds two coordinator round
# trips (AddPartitionsToTxn, EndTxn) to each round, and with aiokafka's default 16 KiB batches a
# partition's second batch also waits for the first to be drained. Measured here (20,000 rows,
# relay_batch 500, 12 partitions): 16 KiB ~10,000 rows/s, 256 KiB ~20,000 rows/s; the
# idempotent relay before it made ~17,000. Well below the broker's 1 MiB message.max.bytes.
RECORD_BATCH_BYTES = 256 * 1024

Stage = Literal["sent", "committed"]
"""Points in a round: ``sent`` (every record acknowledged, not committed), ``committed`` (the
Kafka transaction committed, the rows not yet marked sent)."""

Checkpoint = Callable[[Stage], Awaitable[None]]
"""Awaited at each :data:`Stage` of every round: where tests crash or pause a relay."""


async def _no_checkpoint(stage: Stage) -> None:
    return None


def relay_transactional_id(settings: Settings) -> str:
    """The relay's Kafka transactional id: one per deployment (per ScoreChanged topic), shared by
    every replica, so that each new leader fences the previous one."""
    return f"{Topics(settings.topic_prefix).changed}.relay"


class OutboxRelay:
    """Moves committed outbox rows to the ScoreChanged topic, exactly once."""

    def __init__(
        self,
        settings: Settings,
        metrics: ScoreMetrics,
        *,
        checkpoint: Checkpoint = _no_checkpoint,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._checkpoint = checkpoint
        self._topics = stream_topics(settings.topic_prefix)
        self.transactional_id = relay_transactional_id(settings)
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
            except ProducerFenced as exc:
                self._metrics.relay_fenced.inc()
                log.warning("relay_fenced", transactional_id=self.transactional_id, error=repr(exc))
            except Exception as exc:
                self._failed(exc, backoff)
            else:
                continue  # stopped
            finally:
                # Step down before any backoff: the lock goes (closing the connection releases
                # it for a standby) and ``leading`` says so at once.
                self._step_down()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 5)
            await wait_or_stop(stop, backoff.next_delay())

    async def _serve(
        self, outbox: Outbox, conn: asyncpg.Connection, stop: asyncio.Event, backoff: Backoff
    ) -> None:
        while not await outbox.try_lead():
            self._metrics.outbox_backlog.set(await outbox.backlog())
            if await wait_or_stop(stop, self._settings.relay_standby_poll_s):
                return
        self.leading = True
        self._metrics.relay_leader.set(1)
        log.info("relay_leading", transactional_id=self.transactional_id)
        async with self._term_producer() as producer:
            await self._recover(producer, outbox)
            wake = asyncio.Event()
            await conn.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
            loop = asyncio.get_running_loop()
            next_purge = next_gauge = loop.time()
            while not stop.is_set():
                wake.clear()  # before reading: a commit after this point wakes the next round
                published = await self._publish_round(producer, outbox)
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

    @contextlib.asynccontextmanager
    async def _term_producer(self) -> AsyncIterator[AIOKafkaProducer]:
        """A transactional producer for one leadership term; its start fences the last leader."""
        producer = make_producer(
            self._settings,
            client_id=f"{self._settings.service_name}-relay",
            transactional_id=self.transactional_id,
            max_batch_bytes=RECORD_BATCH_BYTES,
        )
        try:
            await producer.start()
            yield producer
        finally:
            try:
                # Quick unless Kafka is unreachable with records still queued: the producer
                # then keeps retrying in the background, harmlessly (the next leader fences it).
                async with asyncio.timeout(self._settings.relay_kafka_timeout_s):
                    await producer.stop()
            except TimeoutError:
                log.warning("relay_producer_stop_timed_out")

    async def _recover(self, producer: AIOKafkaProducer, outbox: Outbox) -> None:
        """Mark sent what an earlier leader committed to Kafka but did not mark."""
        tps = [
            TopicPartition(topic, p)
            for topic in self._topics.values()
            for p in sorted(await producer.partitions_for(topic))
        ]
        async with asyncio.timeout(self._settings.relay_kafka_timeout_s):
            found = await committed_unsent(self._settings, tps, outbox, self._settings.relay_batch)
        if found:
            await outbox.mark_sent(found)
            self._metrics.relay_recovered.inc(len(found))
            log.info("relay_recovered", rows=len(found), first=min(found), last=max(found))

    async def _publish_round(self, producer: AIOKafkaProducer, outbox: Outbox) -> int:
        rows = await outbox.unsent(self._settings.relay_batch)
        if not rows:
            return 0
        partitions: dict[str, int] = {}
        by_partition: dict[TopicPartition, list[OutboxRow]] = {}
        for r in rows:
            topic = self._topics.get(r.stream)
            if topic is None:  # written by a newer version: stop rather than reorder or drop
                raise ValueError(f"outbox row {r.id} has an unknown stream {r.stream!r}")
            if topic not in partitions:
                partitions[topic] = len(await producer.partitions_for(topic))
            tp = TopicPartition(topic, key_partition(r.key, partitions[topic]))
            by_partition.setdefault(tp, []).append(r)
        await producer.begin_transaction()
        try:
            await _all_acked(await self._send(producer, by_partition))
            await self._checkpoint("sent")
        except BaseException as exc:
            await self._abort(producer, exc)
            raise
        await producer.commit_transaction()
        await self._checkpoint("committed")
        await outbox.mark_sent([r.id for r in rows])
        self._metrics.relay_published.inc(len(rows))
        return len(rows)

    async def _send(
        self, producer: AIOKafkaProducer, by_partition: dict[TopicPartition, list[OutboxRow]]
    ) -> list[asyncio.Future[object]]:
        """Queue the rows as whole record batches per partition, in id order; returns the acks.

        A batch costs far less per event than one send() each. The producer keeps one batch in
        flight per partition, so the events of a partition (and of each user) land in order.
        """
        acks = []
        for tp, events in by_partition.items():
            batch = producer.create_batch()
            for r in events:
                if batch.append(key=r.key, value=r.payload, timestamp=None, headers=r.headers):
                    continue
                acks.append(await producer.send_batch(batch, tp.topic, partition=tp.partition))
                batch = producer.create_batch()
                if not batch.append(key=r.key, value=r.payload, timestamp=None, headers=r.headers):
                    raise ValueError(f"outbox row {r.id} does not fit in a Kafka record batch")
            acks.append(await producer.send_batch(batch, tp.topic, partition=tp.partition))
        return acks

    async def _abort(self, producer: AIOKafkaProducer, cause: BaseException) -> None:
        """Abort the round's transaction, if the producer still can (a fenced one cannot: the
        new leader's start aborted it already)."""
        if isinstance(cause, ProducerFenced):
            return
        try:
            async with asyncio.timeout(self._settings.relay_kafka_timeout_s):
                await producer.abort_transaction()
        except Exception as exc:
            # Left open, it is aborted by the next leader's start (or the transaction timeout).
            log.warning("relay_abort_failed", error=repr(exc), cause=repr(cause))

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
