"""The edge of the service: consume score commands, apply them in batches, commit offsets.

Offsets move only past work that is durable: a batch's PostgreSQL transaction has committed and
its poison records are acknowledged on the dead-letter topic. A crash anywhere in between
redelivers the batch, and the ``actions`` table turns every redelivered command into a duplicate.

Rebalances: the listener lets the in-flight batch finish and commit before partitions are
revoked (bounded by ``revoke_wait_s``). If the batch cannot finish in time (PostgreSQL down), the
partitions go anyway; the batch then drops the records of partitions it no longer owns and never
commits offsets for them. The new owner starts from the last commit and dedupes whatever this
replica still applied, so nothing is lost and nothing counts twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from opentelemetry import trace

from common.backoff import Backoff, wait_or_stop
from common.events import Topics, utcnow
from common.tracing import linked
from score.apply import Plan
from score.commands import Admission, Command, Delivery, Poison, PoisonReason, decode
from score.metrics import ScoreMetrics
from score.settings import Settings
from score.store import ScoreStore

log = structlog.get_logger(__name__)

T = TypeVar("T")
Item = TypeVar("Item", Command, Poison)
Batch = dict[TopicPartition, list[ConsumerRecord]]

# Links from the batch span to the commands' own traces; a few are enough to navigate.
_MAX_TRACE_LINKS = 32


class BatchAbandoned(Exception):
    """The batch stops unfinished (shutting down while a dependency is down); nothing commits."""


class CommandConsumer:
    """Applies the commands topic to the store, exactly once per action."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
        store: ScoreStore,
        settings: Settings,
        metrics: ScoreMetrics,
    ) -> None:
        self._consumer = consumer
        self._producer = producer
        self._store = store
        self._settings = settings
        self._metrics = metrics
        self._topics = Topics(settings.topic_prefix)
        self._admission = Admission.from_settings(settings)
        self._in_flight = asyncio.Lock()
        self._positions: dict[TopicPartition, int] = {}
        self._failing: dict[str, str] = {}  # stage -> error, while that stage keeps failing

    def subscribe(self) -> None:
        """Join the consumer group on the commands topic, with the rebalance listener."""
        listener = _Rebalance(self, self._settings.revoke_wait_s)
        self._consumer.subscribe([self._topics.commands], listener=listener)

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in progress then finishes and commits."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while not stop.is_set():
            try:
                batch = await self._poll()
            except KafkaError as exc:
                self._failed("poll", exc, backoff.attempt)
                await wait_or_stop(stop, backoff.next_delay())
                continue
            backoff.reset()
            self._recovered("poll", 1)
            if not batch:
                continue
            async with self._in_flight:
                try:
                    await self._process(batch, stop)
                except BatchAbandoned:
                    log.warning("batch_abandoned", records=sum(len(r) for r in batch.values()))
                    return

    async def _poll(self) -> Batch:
        """What getmany() has, topped up for at most ``batch_wait_ms``, up to ``batch_max``."""
        limit = self._settings.batch_max
        batch: Batch = await self._consumer.getmany(
            timeout_ms=self._settings.poll_idle_ms, max_records=limit
        )
        count = sum(len(records) for records in batch.values())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.batch_wait_ms / 1000
        while 0 < count < limit and (left := deadline - loop.time()) > 0:
            more: Batch = await self._consumer.getmany(
                timeout_ms=int(left * 1000), max_records=limit - count
            )
            if not more:
                break
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
                count += len(records)
        return batch

    async def _process(self, batch: Batch, stop: asyncio.Event) -> None:
        deliveries = [
            Delivery(r.topic, r.partition, r.offset, r.key, r.value, tuple(r.headers))
            for records in batch.values()
            for r in records
        ]
        self._metrics.batch_size.observe(len(deliveries))
        commands: list[Command] = []
        poison: list[Poison] = []
        for item in (decode(d, self._admission) for d in deliveries):
            if isinstance(item, Command):
                commands.append(item)
            else:
                poison.append(item)

        # No instrumentation sees a batch apply: this span is ours, linked to the commands' send
        # spans (their records' traceparent). Looked up per batch: the provider may change.
        links = linked((c.delivery.headers for c in commands), _MAX_TRACE_LINKS)
        tracer = trace.get_tracer(__name__)
        with tracer.start_as_current_span("score.apply_batch", links=links) as span:
            span.set_attribute("score.batch.records", len(deliveries))
            plan = await self._retry("apply", stop, lambda: self._apply(commands))
            poison.extend(
                Poison(c.delivery, PoisonReason.UNKNOWN_USER, f"no user {c.data.user_id}")
                for c in plan.unknown_users
            )
            dead: list[Poison] = []
            if poison:
                dead = await self._retry("dead-letter", stop, lambda: self._dead_letter(poison))
            span.set_attribute("score.batch.applied", len(plan.applied))
            span.set_attribute("score.batch.duplicates", len(plan.duplicates))

        self._metrics.applied.inc(len(plan.applied))
        committed = utcnow()
        for a in plan.applied:
            age = (committed - a.command.data.accepted_at).total_seconds()
            self._metrics.command_age.observe(max(0.0, age))
        self._metrics.duplicates.inc(len(plan.duplicates))
        for p in dead:
            self._metrics.dead_lettered.labels(p.reason.value).inc()
        await self._commit(batch)

    async def _apply(self, commands: list[Command]) -> Plan:
        owned = self._owned(commands)
        start = time.perf_counter()
        plan = await self._store.apply(owned)
        self._metrics.apply_seconds.observe(time.perf_counter() - start)
        return plan

    async def _dead_letter(self, poison: list[Poison]) -> list[Poison]:
        """Publish poison records to the DLQ unchanged, with the reason in ``x-error``.

        Returns the records published (those of partitions this replica still owns).
        """
        owned = self._owned(poison)
        sent = []
        for p in owned:
            d = p.delivery
            if d.key is None and d.value is None:
                # Kafka cannot carry a record with neither key nor value: nothing to keep.
                log.warning("empty_record_dropped", partition=d.partition, offset=d.offset)
                continue
            headers = [
                *d.headers,
                ("x-error", p.reason.value.encode()),
                ("x-error-detail", p.detail[:1000].encode()),
                ("x-original-topic", d.topic.encode()),
                ("x-original-partition", str(d.partition).encode()),
                ("x-original-offset", str(d.offset).encode()),
            ]
            sent.append(
                await self._producer.send(self._topics.dlq, d.value, key=d.key, headers=headers)
            )
        for result in await asyncio.gather(*sent, return_exceptions=True):
            if isinstance(result, BaseException):  # raised after all settled: none left unread
                raise result
        for p in owned:
            log.warning(
                "dead_lettered",
                reason=p.reason.value,
                detail=p.detail[:200],
                partition=p.delivery.partition,
                offset=p.delivery.offset,
            )
        return owned

    def _owned(self, items: Sequence[Item]) -> list[Item]:
        """The items whose partition this replica still owns (work for others is dropped)."""
        assigned = self._consumer.assignment()
        return [
            i for i in items if TopicPartition(i.delivery.topic, i.delivery.partition) in assigned
        ]

    async def _commit(self, batch: Batch) -> None:
        assigned = self._consumer.assignment()
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if tp in assigned}
        self._positions.update(offsets)
        self._update_lag()
        if not offsets:
            return
        try:
            async with asyncio.timeout(self._settings.commit_timeout_s):
                await self._consumer.commit(offsets)
            self._recovered("commit", 1)
        except (CommitFailedError, IllegalStateError) as exc:
            # The group moved on: the new owner resumes from the last commit and skips, as
            # duplicates, what this batch applied.
            log.info("commit_skipped_after_rebalance", error=repr(exc))
        except (KafkaError, TimeoutError) as exc:
            # The next commit covers these offsets; after a crash they are redelivered and
            # recognised as duplicates.
            self._failed("commit", exc, 0)

    async def _retry(
        self, stage: str, stop: asyncio.Event, attempt: Callable[[], Awaitable[T]]
    ) -> T:
        """Run ``attempt`` until it succeeds, pausing with backoff; give up only when stopping."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while True:
            try:
                result = await attempt()
            except Exception as exc:
                self._failed(stage, exc, backoff.attempt)
                if await wait_or_stop(stop, backoff.next_delay()):
                    raise BatchAbandoned(stage) from exc
                continue
            self._recovered(stage, backoff.attempt + 1)
            return result

    @property
    def failure(self) -> str | None:
        """What keeps failing right now, if anything (readiness reports it)."""
        return "; ".join(f"{k}: {v}" for k, v in self._failing.items()) or None

    def _recovered(self, stage: str, attempts: int) -> None:
        if self._failing.pop(stage, None) is not None:
            log.info("recovered", stage=stage, attempts=attempts)

    def _failed(self, stage: str, exc: BaseException, attempt: int) -> None:
        self._failing[stage] = type(exc).__name__
        self._metrics.failures.labels(stage).inc()
        # The first failure of a streak gets the traceback; retries only say it goes on.
        log.warning(
            "transient_failure",
            stage=stage,
            error=repr(exc),
            attempt=attempt + 1,
            exc_info=exc if attempt == 0 else None,
        )

    def _update_lag(self) -> None:
        for tp in self._consumer.assignment():
            position = self._positions.get(tp)
            highwater = self._consumer.highwater(tp)
            if position is not None and highwater is not None:
                self._metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(
                    max(0, highwater - position)
                )

    async def wait_in_flight(self, timeout_s: float) -> bool:
        """Wait until no batch is in progress; False if one is still running after the timeout."""
        try:
            async with asyncio.timeout(timeout_s), self._in_flight:
                return True
        except TimeoutError:
            return False

    def forget(self, partitions: set[TopicPartition]) -> None:
        """Drop what we know about partitions that are no longer ours."""
        for tp in partitions:
            self._positions.pop(tp, None)
            with contextlib.suppress(KeyError):  # no batch from it yet: no gauge to remove
                self._metrics.consumer_lag.remove(tp.topic, str(tp.partition))


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Finish the in-flight batch (and its commit) before partitions change hands."""

    def __init__(self, owner: CommandConsumer, wait_s: float) -> None:
        self._owner = owner
        self._wait_s = wait_s

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        finished = await self._owner.wait_in_flight(self._wait_s)
        if not finished:
            log.warning("revoked_during_batch", partitions=_names(revoked))
        self._owner.forget(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions_assigned", partitions=_names(assigned))


def _names(partitions: set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
