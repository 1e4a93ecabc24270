"""Anomaly flags at run time: read ScoreChanged, feed the model, raise and announce flags.

A background task of the score service, beside the command consumer and the relay but sharing
nothing with them except the pool and the producer. It reads every partition of
``scoreboard.score-changed.v1`` (read_committed: each applied change once) with a consumer of
its own, outside any consumer group, like the broadcaster's replicas: each score replica
compares every active player with the whole population. Why not split the players between
replicas in a group: a median over a twelfth of a small population is noisy, a group would
rebalance with every deploy, and the Kafka user of the score service may join only the command
consumer's group. The cost is that every replica parses every change (a few microseconds each)
and evaluates every active player once a second.

The state (two numbers per active player) lives in memory and is never checkpointed: no offsets
are committed. At start a replica reads the topic again from ``flags_active_window_s`` ago
(``offsets_for_times``), which rebuilds exactly the rates that matter; a restart or a failure
costs a re-read of half a minute, and a player who was outlying then is outlying again once the
re-read is done.

Raising a flag (score/anomaly.py says when): a row in ``player_flags``, at most one open per
player, so of the replicas that see the same outlier exactly one raises the flag (the others'
inserts find it open and do nothing), and a re-read cannot raise a second one. That replica
then counts it, writes a security log line and sends the event on
``scoreboard.player-flagged.v1``. If sending fails the row stays unpublished and a sweep sends it
again later (same event id).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from common.backoff import Backoff, wait_or_stop
from common.events import (
    SCORE_SOURCE,
    STRUCTURED_MODE_HEADER,
    PlayerFlagged,
    PlayerFlaggedEvent,
    ScoreChangedEvent,
    Topics,
    encode,
    out_of_range,
)
from common.kafka import make_consumer, started
from score.anomaly import ModelParams, Outlier, RateModel
from score.flag_store import FlagStore
from score.metrics import FlagMetrics
from score.settings import Settings

log = structlog.get_logger(__name__)

# Unpublished flags older than this are sent again (by whichever replica sweeps first). Longer
# than a send normally takes, so the replica that raised a flag is not raced for it.
REPUBLISH_AFTER_S = 10.0
SWEEP_EVERY_S = 5.0
SEND_TIMEOUT_S = 10.0


def model_params(settings: Settings) -> ModelParams:
    """The model's parameters from the ``flags_*`` settings."""
    return ModelParams(
        tau_s=settings.flags_tau_s,
        z_threshold=settings.flags_z_threshold,
        sustain=settings.flags_sustain,
        mad_floor=settings.flags_mad_floor,
        rate_floor=settings.flags_rate_floor,
        active_window_s=settings.flags_active_window_s,
        min_active=settings.flags_min_active,
    )


class PlayerFlagger:
    """The flagging task: consume changes, evaluate every ``flags_eval_interval_s``, flag."""

    def __init__(
        self,
        settings: Settings,
        producer: AIOKafkaProducer,
        store: FlagStore,
        metrics: FlagMetrics,
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._store = store
        self._metrics = metrics
        self._params = model_params(settings)
        topics = Topics(settings.topic_prefix)
        self._changed = topics.changed
        self._flagged = topics.flagged
        # Set once the consumer has its partitions and the re-read has begun.
        self.assigned = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> None:
        """Flag until ``stop`` is set; failures restart the consumer (and its re-read)."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while not stop.is_set():
            try:
                await self._consume(stop, backoff)
            except asyncio.CancelledError:
                raise
            except Exception:
                self._metrics.failures.labels("consume").inc()
                log.exception("flagger_failed", attempt=backoff.attempt)
            await wait_or_stop(stop, backoff.next_delay())

    async def _consume(self, stop: asyncio.Event, backoff: Backoff) -> None:
        model = RateModel(self._params)
        consumer = make_consumer(
            self._settings,
            self._changed,
            group_id=None,
            client_id=f"{self._settings.service_name}-flags",
            auto_offset_reset="latest",
        )
        async with started(consumer):
            await self._rewind(consumer)
            self.assigned.set()
            loop = asyncio.get_running_loop()
            interval = self._settings.flags_eval_interval_s
            next_eval = loop.time() + interval
            next_sweep = loop.time()
            while not stop.is_set():
                wait_ms = max(0, int((next_eval - loop.time()) * 1000))
                batches = await consumer.getmany(timeout_ms=min(wait_ms, 500))
                for records in batches.values():
                    for record in records:
                        self._observe(model, record)
                now = loop.time()
                if now >= next_eval:
                    next_eval = max(next_eval + interval, now)
                    await self._evaluate(model)
                    backoff.reset()
                if now >= next_sweep:
                    next_sweep = now + SWEEP_EVERY_S
                    await self._sweep()

    async def _rewind(self, consumer: AIOKafkaConsumer) -> None:
        """Read every partition from the active window's start (or from the end where nothing is
        that recent)."""
        # Subscribed outside a group, the consumer is given every partition when it starts.
        assigned = sorted(consumer.assignment())
        if not assigned:
            raise LookupError(f"topic {self._changed} has no partitions (does it exist?)")
        since_ms = int((time.time() - self._params.active_window_s) * 1000)
        found = await consumer.offsets_for_times({tp: since_ms for tp in assigned})
        quiet = []
        for tp in assigned:
            at = found.get(tp)
            if at is None:
                quiet.append(tp)
            else:
                consumer.seek(tp, at.offset)
        if quiet:
            await consumer.seek_to_end(*quiet)
        log.info("flags_consuming", topic=self._changed, partitions=len(assigned))

    def _observe(self, model: RateModel, record: ConsumerRecord[bytes, bytes]) -> None:
        try:
            change = ScoreChangedEvent.model_validate_json(record.value or b"").data
        except ValidationError as exc:
            # Our own topic: an unreadable record is a bug elsewhere, not a reason to stop.
            log.warning(
                "flags_unreadable_change",
                partition=record.partition,
                offset=record.offset,
                error=exc.errors()[0]["msg"],
            )
            return
        if (field := out_of_range(change)) is not None:
            # A delta no float holds would stop the model's arithmetic (and this task with it).
            log.warning(
                "flags_unreadable_change",
                partition=record.partition,
                offset=record.offset,
                error=f"{field} out of range",
            )
            return
        model.observe(
            change.user_id,
            change.username,
            change.delta,
            change.occurred_at.timestamp(),
            version=change.version,
        )

    async def _evaluate(self, model: RateModel) -> None:
        evaluation = model.evaluate(time.time())
        self._metrics.active_players.set(evaluation.active_players)
        self._metrics.median_rate.set(evaluation.median)
        self._metrics.mad_rate.set(evaluation.mad)
        for outlier in evaluation.outliers:
            await self._flag(outlier)

    async def _flag(self, outlier: Outlier) -> None:
        flag = PlayerFlagged(
            flag_id=uuid.uuid4(),
            user_id=outlier.user_id,
            username=outlier.username,
            rate=round(outlier.rate, 3),
            z=round(outlier.z, 3),
            median=round(outlier.median, 3),
            mad=round(outlier.mad, 3),
            active_players=outlier.active_players,
            tau_s=self._params.tau_s,
            flagged_at=datetime.fromtimestamp(outlier.at, UTC),
        )
        if not await self._store.raise_flag(flag):
            log.info("flag_already_open", user_id=str(flag.user_id), rate=flag.rate, z=flag.z)
            return
        self._metrics.flagged.inc()
        log.warning(
            "security",
            reason="player_flagged",
            flag_id=str(flag.flag_id),
            user_id=str(flag.user_id),
            username=flag.username,
            rate=flag.rate,
            z=flag.z,
            median=flag.median,
            mad=flag.mad,
            active_players=flag.active_players,
        )
        await self._publish(flag)

    async def _publish(self, flag: PlayerFlagged) -> None:
        """Send the flag's event and mark it published; a failure leaves it to the sweep."""
        try:
            await asyncio.wait_for(
                self._producer.send_and_wait(
                    self._flagged,
                    encode(PlayerFlaggedEvent.wrap(flag, source=SCORE_SOURCE)),
                    key=str(flag.user_id).encode(),
                    headers=[STRUCTURED_MODE_HEADER],
                ),
                SEND_TIMEOUT_S,
            )
        except Exception:
            self._metrics.failures.labels("publish").inc()
            log.exception("flag_publish_failed", flag_id=str(flag.flag_id))
            return
        await self._store.mark_published(flag.flag_id)

    async def _sweep(self) -> None:
        for flag in await self._store.unpublished(older_than_s=REPUBLISH_AFTER_S):
            log.info("flag_republished", flag_id=str(flag.flag_id))
            await self._publish(flag)
