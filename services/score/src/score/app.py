"""Wiring: the score service's aiohttp app (health, readiness, metrics) and its background work.

The HTTP server is only for operators: /healthz, /readyz (PostgreSQL answers, partitions are
assigned, no batch is stuck retrying) and /metrics. The real work runs as two background tasks
started and stopped in a cleanup context: the command consumer and the outbox relay.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import structlog
from aiohttp import web

from common.health import readiness_key, registry_key
from common.kafka import make_consumer, make_producer, started
from common.migrate import migrate
from common.postgres import create_pool
from common.web import create_base_app
from score.consumer import CommandConsumer
from score.metrics import ScoreMetrics
from score.relay import OutboxRelay
from score.settings import Settings
from score.store import ScoreStore

log = structlog.get_logger(__name__)

settings_key = web.AppKey("settings", Settings)
metrics_key = web.AppKey("score_metrics", ScoreMetrics)
pool_key = web.AppKey("pool", asyncpg.Pool)
consumer_key = web.AppKey("command_consumer", CommandConsumer)
relay_key = web.AppKey("outbox_relay", OutboxRelay)


class NoPartitionsAssigned(Exception):
    """The consumer holds no partition of the commands topic (not joined yet, or rebalancing)."""


class ApplyStalled(Exception):
    """The consumer is retrying a batch after a transient failure, or has stopped."""


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in cleanup contexts."""
    app = create_base_app(settings.service_name)
    app[settings_key] = settings
    app[metrics_key] = ScoreMetrics.create(app[registry_key])
    app.cleanup_ctx.append(_service)
    return app


async def _service(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    metrics = app[metrics_key]
    if settings.migrate_on_start:
        await migrate(settings.postgres_dsn)
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
        consumer = CommandConsumer(kafka_consumer, producer, ScoreStore(pool), settings, metrics)
        consumer.subscribe()
        relay = OutboxRelay(producer, settings, metrics)
        app[pool_key] = pool
        app[consumer_key] = consumer
        app[relay_key] = relay

        stop = asyncio.Event()
        consuming = asyncio.create_task(consumer.run(stop), name="score-consumer")
        relaying = asyncio.create_task(relay.run(stop), name="score-relay")
        for task in (consuming, relaying):
            task.add_done_callback(_report_exit)

        async def postgres() -> None:
            await pool.fetchval("SELECT 1")

        async def kafka() -> None:
            if not kafka_consumer.assignment():
                raise NoPartitionsAssigned()

        async def applying() -> None:
            if consuming.done():
                raise ApplyStalled("the consumer task has stopped")
            if consumer.failure:
                raise ApplyStalled(consumer.failure)

        app[readiness_key].update(postgres=postgres, kafka=kafka, apply=applying)
        try:
            yield
        finally:
            # SIGTERM: the batch in progress finishes and commits, the relay ends its round.
            stop.set()
            _, pending = await asyncio.wait(
                (consuming, relaying), timeout=settings.shutdown_grace_s
            )
            for task in pending:
                log.warning("shutdown_cancelled", task=task.get_name())
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


def _report_exit(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("background_task_crashed", task=task.get_name(), exc_info=exc)
