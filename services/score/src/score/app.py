"""Wiring: the score service's aiohttp app (health, readiness, metrics) and its background work.

The HTTP server is only for operators: /healthz, /readyz (PostgreSQL answers, partitions are
assigned, no batch is stuck retrying) and /metrics. The real work runs as background tasks started
and stopped in a cleanup context: the command consumer, the outbox relay, (unless
flags_enabled is off) the anomaly flagger and (unless period_close_enabled is off) the period
closer and the moderation announcer, which work only while their replica leads the relay.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from common.health import readiness_key, registry_key
from common.kafka import make_consumer, make_producer, started
from common.postgres import create_pool
from common.tasks import running
from common.web import create_base_app
from score.closer import CloserMetrics, PeriodCloser
from score.command_progress import CommandProgress
from score.components import Components, components_key
from score.consumer import CommandConsumer
from score.flag_store import FlagStore
from score.flags import PlayerFlagger
from score.metrics import FlagMetrics, ScoreMetrics
from score.moderation import ModerationAnnouncer
from score.relay import OutboxRelay
from score.settings import Settings
from score.store import ScoreStore

log = structlog.get_logger(__name__)

CONSUMER_TASK = "score-consumer"
RELAY_TASK = "score-relay"
FLAGS_TASK = "score-flags"
CLOSER_TASK = "score-closer"
MODERATION_TASK = "score-moderation"


class NoPartitionsAssigned(Exception):
    """The consumer holds no partition of the commands topic (not joined yet, or rebalancing)."""


class ApplyStalled(Exception):
    """The consumer is retrying a batch after a transient failure, or has stopped."""


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in a cleanup context."""
    app = create_base_app(settings.service_name)
    if settings.uses_dev_command_key:
        log.warning("dev_command_key_in_use", hint="set SCOREBOARD_COMMAND_KEYS in production")
    metrics = ScoreMetrics.create(app[registry_key])
    app.cleanup_ctx.append(functools.partial(_service, settings, metrics))
    return app


async def _service(
    settings: Settings, metrics: ScoreMetrics, app: web.Application
) -> AsyncIterator[None]:
    # No migrations here: the service's role cannot change the schema; the owner migrates
    # first (make migrate, the compose one-shot, the k8s Job; common.migrate).
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        producer = make_producer(settings, client_id=settings.service_name)
        await stack.enter_async_context(started(producer))
        kafka_consumer = make_consumer(
            settings,
            group_id=settings.group_id,
            client_id=settings.service_name,
            max_poll_records=settings.batch_max,
        )
        await stack.enter_async_context(started(kafka_consumer))
        consumer = CommandConsumer(
            kafka_consumer,
            producer,
            ScoreStore(pool, max_board_rows=settings.board_rows_per_transaction),
            settings,
            metrics,
        )
        consumer.subscribe()
        # The relay makes its own transactional producer each time it takes the lead.
        relay = OutboxRelay(settings, metrics)
        parts = app[components_key] = Components(
            settings=settings,
            metrics=metrics,
            pool=pool,
            consumer=consumer,
            relay=relay,
            # Anomaly flags: a task of its own on the ScoreChanged topic (score/flags.py).
            flagger=PlayerFlagger(
                settings,
                producer,
                FlagStore(pool, quarantine=settings.flags_quarantine),
                FlagMetrics.create(app[registry_key]),
            )
            if settings.flags_enabled
            else None,
            closer=PeriodCloser(
                pool, settings, CloserMetrics.create(app[registry_key]), CommandProgress(settings)
            )
            if settings.period_close_enabled
            else None,
            moderation=ModerationAnnouncer(pool, settings),
        )
        # On the way out (SIGTERM) the stop event is set first: the batch in progress finishes
        # and commits, the relay ends its round; whatever still runs after the grace is cancelled.
        stop = asyncio.Event()
        background = {CONSUMER_TASK: parts.consumer.run(stop), RELAY_TASK: parts.relay.run(stop)}
        if parts.flagger is not None:
            background[FLAGS_TASK] = parts.flagger.run(stop)
        if parts.closer is not None:
            background[CLOSER_TASK] = parts.closer.run(stop, lambda: relay.leading)
        if parts.moderation is not None:
            background[MODERATION_TASK] = parts.moderation.run(stop, lambda: relay.leading)
        tasks = await stack.enter_async_context(
            running(
                background,
                stop_event=stop,
                grace_s=settings.shutdown_grace_s,
            )
        )

        async def postgres() -> None:
            await pool.fetchval("SELECT 1")

        async def kafka() -> None:
            if not kafka_consumer.assignment():
                raise NoPartitionsAssigned()

        async def applying() -> None:
            if tasks[CONSUMER_TASK].done():
                raise ApplyStalled("the consumer task has stopped")
            if consumer.failure:
                raise ApplyStalled(consumer.failure)

        app[readiness_key].update(postgres=postgres, kafka=kafka, apply=applying)
        yield
