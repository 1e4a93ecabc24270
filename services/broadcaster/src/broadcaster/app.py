"""Wiring: the broadcaster's aiohttp application and the resources it owns.

Start-up order (cleanup contexts): Redis and PostgreSQL clients, then the board objects, then the
background tasks (the Kafka consumer, the removals watcher and the fan-out ticker). On shutdown,
WebSocket clients are closed first with 1012 (``on_shutdown``), then the tasks stop, then the
clients close.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import structlog
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from broadcaster import handlers, ws
from broadcaster.board import Board
from broadcaster.consumer import ChangeConsumer
from broadcaster.fanout import Fanout
from broadcaster.keys import (
    board_key,
    consumer_key,
    fanout_key,
    leaderboard_key,
    metrics_key,
    pool_key,
    rebuilder_key,
    redis_key,
    removals_key,
    settings_key,
)
from broadcaster.leaderboard import Leaderboard
from broadcaster.metrics import Metrics
from broadcaster.rebuild import Rebuilder
from broadcaster.removals import RemovalWatcher
from broadcaster.scores import ScoreTable
from broadcaster.settings import Settings
from common import tasks as background
from common.health import readiness_key, registry_key
from common.postgres import create_pool
from common.redis_client import create_redis
from common.web import create_base_app

log = structlog.get_logger(__name__)

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


async def _clients(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    redis = create_redis(settings)
    # redis-py retries a failed command 10 times with up to 1 s between tries (about 5 s when
    # Redis is down); the broadcaster has PostgreSQL to fall back on, so it gives up sooner.
    redis.set_retry(Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2))
    pool = await create_pool(settings)
    app[redis_key] = redis
    app[pool_key] = pool

    async def redis_ready() -> None:
        await redis.ping()

    async def postgres_ready() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    app[readiness_key]["redis"] = redis_ready
    app[readiness_key]["postgres"] = postgres_ready
    try:
        yield
    finally:
        await pool.close()
        await redis.aclose()


async def _board(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    metrics = app[metrics_key]
    board = Board(app[redis_key], settings.redis_prefix)
    scores = ScoreTable(app[pool_key])
    rebuilder = Rebuilder(settings, board, scores, metrics)
    leaderboard = Leaderboard(settings, board, scores, rebuilder, metrics)
    app[board_key] = board
    app[rebuilder_key] = rebuilder
    app[leaderboard_key] = leaderboard
    fanout = Fanout(settings, board, leaderboard, metrics)
    app[fanout_key] = fanout
    app[consumer_key] = ChangeConsumer(settings, board, rebuilder, metrics, fanout.nudge)
    app[removals_key] = RemovalWatcher(settings, board, scores, metrics, fanout.nudge)
    yield
    await fanout.close()
    await rebuilder.close()


def _task(name: str, start: Callable[[web.Application], Coroutine[Any, Any, None]]) -> CleanupCtx:
    """A cleanup context running ``start(app)`` in the background for the app's lifetime."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(start(app), name=name)
        yield
        await background.stop(task)

    return ctx


async def _consume(app: web.Application) -> None:
    await app[consumer_key].run()


async def _remove_deleted(app: web.Application) -> None:
    await app[removals_key].run()


async def _tick(app: web.Application) -> None:
    await app[fanout_key].run()


async def _drain(app: web.Application) -> None:
    await app[fanout_key].drain()


async def _board_ready(app: web.Application) -> None:
    # Until the consumer has its positions and the board is built, this replica could show a
    # board that misses changes: keep it out of rotation until then (not after: a Kafka outage
    # later leaves it serving the board it has).
    if not app[consumer_key].ready.is_set():
        raise RuntimeError("board not initialised yet")


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in cleanup contexts."""
    app = create_base_app(settings.service_name)
    app[settings_key] = settings
    app[metrics_key] = Metrics.create(app[registry_key])
    app.cleanup_ctx.extend(
        [
            _clients,
            _board,
            _task("board-consumer", _consume),
            _task("board-removals", _remove_deleted),
            _task("fanout-ticker", _tick),
        ]
    )
    app[readiness_key]["board"] = lambda: _board_ready(app)
    app.on_shutdown.append(_drain)
    app.router.add_get("/api/scoreboard/top", handlers.top)
    app.router.add_get("/api/scoreboard/users/{user_id}", handlers.user)
    app.router.add_get("/api/scoreboard/me", handlers.me)
    app.router.add_get("/ws/scoreboard", ws.scoreboard_ws)
    return app
