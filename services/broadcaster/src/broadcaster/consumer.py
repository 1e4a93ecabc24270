"""Consuming ``scoreboard.score-changed.v1`` into the Redis board.

Consumer groups: each replica has a group of its own, ``f"{group_id_prefix}-{replica_id}"``
(``replica_id`` defaults to the hostname), so every replica reads every event and applies it to the
shared board. The Lua apply is idempotent (a user's entry only moves to a newer version), so the
first replica to apply an event moves the board and publishes on ``P applied``; the others find
it already there and do nothing. Why: any one live replica keeps the board current, so losing or
restarting replicas never pauses updates, and there are no cross-replica rebalances (a scale-up
or a rolling deploy does not stop the board for a rebalance round). The cost is N Redis calls per
event for N replicas, each a cheap no-op after the first. The alternative, one shared group whose
partitions are split across replicas, applies each event once, but every membership change stalls
its partitions for a rebalance, and a crashed replica's partitions wait for the session timeout.

Offsets are committed only after Redis has applied the batch, so a crash replays the uncommitted
tail, which the version check turns into no-ops (at-least-once delivery, exactly-once effect).
They are committed at most every ``commit_interval_s`` (and when the consumer stops): an offset
commit is a write to Kafka's ``__consumer_offsets`` log, and one per batch cost Kafka and this
service more than the batches themselves at a few hundred events a second. A crash replays at
most that interval, as no-ops.

A new group (no committed offsets, e.g. a fresh hostname) starts at ``consumer_offset_reset``
("latest") and, once its positions are fixed, merges the whole board from PostgreSQL: every
change committed to PostgreSQL before that merge is in it, and every later one is published to
Kafka after the positions, so nothing falls between the two. The board is also rebuilt whenever
Redis lost it (the apply script refuses to write to a board without its ``built`` marker).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterable, Sequence

import structlog
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from opentelemetry import trace
from pydantic import ValidationError
from redis.exceptions import RedisError

from broadcaster.board_periods import BoardPeriods
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.rebuild import Rebuilder
from broadcaster.redis_board import RedisBoard
from broadcaster.settings import Settings
from common.backoff import Backoff
from common.events import ScoreChanged, ScoreChangedEvent, Topics, out_of_range, utcnow
from common.kafka import make_consumer
from common.tracing import linked

log = structlog.get_logger(__name__)


class _Assignment(ConsumerRebalanceListener):  # type: ignore[misc]
    """Signals when the group gave this consumer its partitions."""

    def __init__(self) -> None:
        self.assigned = asyncio.Event()

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.assigned.clear()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.assigned.set()


class ChangeConsumer:
    """Applies ScoreChanged events to the board, committing after Redis applied them."""

    def __init__(
        self,
        settings: Settings,
        board: RedisBoard,
        rebuilder: Rebuilder,
        metrics: BroadcasterMetrics,
        on_change: Callable[[Iterable[uuid.UUID]], None] = lambda users: None,
        periods: BoardPeriods | None = None,
    ) -> None:
        self._settings = settings
        # The other boards' periods (their entries ride on the same events), after the main board.
        self._periods = periods
        # Called after each batch with the users it changed: the board moved (by us, or by a
        # replica that was faster).
        self._on_change = on_change
        self._board = board
        self._rebuilder = rebuilder
        self._metrics = metrics
        self.group_id = f"{settings.group_id_prefix}-{settings.replica_id}"
        self.topic = Topics(settings.topic_prefix).changed
        # Set once the first assignment's positions are fixed and the board is built.
        self.ready = asyncio.Event()
        # Paces restarts after failed runs; reset once a run has started.
        self._restarts = self._backoff()

    async def run(self) -> None:
        """Consume until cancelled; Kafka or Redis failures are retried with backoff."""
        while True:
            try:
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception(
                    "consumer_failed", group_id=self.group_id, attempt=self._restarts.attempt
                )
            await self._restarts.sleep()

    def _backoff(self) -> Backoff:
        return Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)

    async def _consume(self) -> None:
        consumer = make_consumer(
            self._settings,
            group_id=self.group_id,
            client_id=f"broadcaster-{self._settings.replica_id}",
            auto_offset_reset=self._settings.consumer_offset_reset,
            max_poll_records=self._settings.consumer_batch_max,
        )
        assignment = _Assignment()
        consumer.subscribe([self.topic], listener=assignment)
        try:
            await consumer.start()
            await self._consume_with(consumer, assignment)
        finally:
            # Stopped even when start() failed or was cancelled (an unstopped consumer leaks its
            # connections), and shielded so a repeated cancellation cannot cut the stop short.
            await asyncio.shield(consumer.stop())

    async def _consume_with(self, consumer: AIOKafkaConsumer, assignment: _Assignment) -> None:
        await assignment.assigned.wait()
        new_group = await self._fix_positions(consumer)
        # A new group must merge from a PostgreSQL snapshot read after its positions were
        # fixed (a rebuild that began since then does it, e.g. one a first read asked for).
        positioned_at = asyncio.get_running_loop().time()
        merged = await self._rebuilder.ensure_built(
            merge_since=positioned_at if new_group else None
        )
        log.info(
            "consumer_started",
            group_id=self.group_id,
            partitions=len(consumer.assignment()),
            new_group=new_group,
            rebuilt=merged,
        )
        self.ready.set()
        self._rebuilder.arm()
        self._restarts.reset()
        loop = asyncio.get_running_loop()
        next_commit = loop.time()
        uncommitted = False
        try:
            while True:
                batches = await consumer.getmany(timeout_ms=self._settings.consumer_poll_ms)
                records = [r for partition in batches.values() for r in partition]
                if records:
                    await self._apply(records)  # (it nudges the fan-out)
                    uncommitted = True
                if uncommitted and loop.time() >= next_commit:
                    await consumer.commit()
                    uncommitted = False
                    next_commit = loop.time() + self._settings.commit_interval_s
        finally:
            if uncommitted:  # best effort: what is not committed is replayed, as no-ops
                try:
                    async with asyncio.timeout(5.0):
                        await asyncio.shield(consumer.commit())
                except Exception as exc:
                    log.info("final_commit_skipped", error=repr(exc))

    async def _fix_positions(self, consumer: AIOKafkaConsumer) -> bool:
        """Resolve every assigned partition's position; True when the group had no offsets."""
        new_group = True
        for tp in consumer.assignment():
            if await consumer.committed(tp) is not None:
                new_group = False
            await consumer.position(tp)
        return new_group

    async def _apply(self, records: Sequence[ConsumerRecord]) -> list[ScoreChanged]:
        """Apply the batch's valid events to the board; returns them."""
        changes: list[ScoreChanged] = []
        for record in records:
            try:
                change = ScoreChangedEvent.model_validate_json(record.value).data
            except ValidationError as exc:
                # A record no version of this service can read: skip it, loudly, rather than
                # stop the board for everyone.
                self._skip(record, errors=exc.error_count())
                continue
            if (field := out_of_range(change)) is not None:
                # Valid by the schema, but a number the board cannot hold (Lua and sorted-set
                # scores are doubles): applied, it would fail or corrupt the board version.
                self._skip(record, out_of_range=field)
                continue
            changes.append(change)
        if not changes:
            return changes
        # Ours: no instrumentation sees a batch apply. Linked to the events' own traces; the
        # ticker's push span links to this one (the nudge is made inside it).
        links = linked(record.headers or () for record in records)
        tracer = trace.get_tracer(__name__)  # per batch: the provider may change (tests)
        with tracer.start_as_current_span(
            "board apply", kind=trace.SpanKind.CONSUMER, links=links
        ) as span:
            span.set_attribute("messaging.batch.message_count", len(changes))
            chunk = self._settings.apply_chunk
            for start in range(0, len(changes), chunk):
                await self._apply_chunk(changes[start : start + chunk])
            self._on_change(c.user_id for c in changes)  # again: the boards' periods have them
        return changes

    def _skip(self, record: ConsumerRecord, **why: object) -> None:
        self._metrics.events_invalid.inc()
        log.error(
            "invalid_event",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            **why,
        )

    async def _apply_periods(self, periods: BoardPeriods, changes: Sequence[ScoreChanged]) -> None:
        retries = self._backoff()
        while True:
            try:
                await periods.apply(changes)
                return
            except (RedisError, OSError, TimeoutError) as exc:
                # Redis unreachable (other failures only unbuild the period, see board_periods):
                # the version rule makes a retry safe.
                if retries.attempt == 0:
                    log.warning("board_periods_apply_retrying", error=repr(exc))
                await retries.sleep()

    async def _apply_chunk(self, changes: Sequence[ScoreChanged]) -> None:
        retries = self._backoff()
        while True:
            try:
                # The watchers' frames go as soon as the main board has the changes.
                result = await self._board.apply_changes(
                    changes, lambda: self._on_change(c.user_id for c in changes)
                )
                if result is not None:
                    break
                # The board lost its keys: rebuild (or wait for whoever is rebuilding), retry.
                await self._rebuilder.ensure_built()
                continue
            except RedisError as exc:
                if retries.attempt == 0:
                    log.warning("board_apply_retrying", error=repr(exc))
                await retries.sleep()
        if self._periods is not None and any(c.boards for c in changes):
            await self._apply_periods(self._periods, changes)
        now = utcnow()
        self._metrics.events_applied.inc(result.applied)
        self._metrics.events_stale.inc(result.stale)
        for change in changes:
            self._metrics.event_lag.observe(max(0.0, (now - change.occurred_at).total_seconds()))
