"""Wiring: the broadcaster's aiohttp application and the resources it owns.

Start-up order (one cleanup context): the Redis clients (the boards' own when
SCOREBOARD_BOARD_REDIS_URL is set, maybe a Redis Cluster) and PostgreSQL, then the board's parts
(:class:`broadcaster.components.Components`, under one AppKey), then the background tasks (the
Kafka consumer, the removals watcher and the fan-out ticker, in :func:`common.tasks.running`).
On shutdown, WebSocket clients are closed first with 1012 (``on_shutdown``), then the tasks
stop, then the clients close.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
from aiohttp import web
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from broadcaster import board_handlers, handlers, ws
from broadcaster.board_periods import BoardPeriods
from broadcaster.board_reader import BoardReader
from broadcaster.components import Components, components_key
from broadcaster.consumer import ChangeConsumer
from broadcaster.fanout import Fanout
from broadcaster.holds import HoldWatcher
from broadcaster.metrics import BroadcasterMetrics
from broadcaster.moderation import ModerationBoard, ModerationWatcher, sync_board
from broadcaster.period_boards import PeriodBoards
from broadcaster.postgres_boards import PostgresBoards
from broadcaster.postgres_scores import PostgresScores
from broadcaster.rebuild import Rebuilder
from broadcaster.redis_board import RedisBoard
from broadcaster.removals import RemovalWatcher
from broadcaster.settings import Settings
from broadcaster.subscriptions import Subscriptions
from common.health import ReadinessCheck, readiness_key, registry_key
from common.postgres import create_pool
from common.redis_client import RedisClient, create_redis_or_cluster
from common.tasks import running
from common.web import create_base_app

CleanupCtx = Callable[[web.Application], AsyncIterator[None]]


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in its cleanup context."""
    app = create_base_app(settings.service_name, admin_port=settings.admin_port)
    metrics = BroadcasterMetrics.create(app[registry_key])
    app.cleanup_ctx.append(_lifetime(settings, metrics))
    app[readiness_key]["board"] = lambda: _board_ready(app)
    app.on_shutdown.append(_drain)
    app.router.add_get("/api/scoreboard/top", handlers.top)
    app.router.add_get("/api/scoreboard/users/{user_id}", handlers.user)
    app.router.add_get("/api/scoreboard/me", handlers.me)
    app.router.add_get("/ws/scoreboard", ws.scoreboard_ws)
    app.router.add_get("/api/boards", board_handlers.boards)
    board = "/api/boards/{board}/{window}"
    app.router.add_get(board + "/top", board_handlers.top)
    app.router.add_get(board + "/around/{user_id}", board_handlers.around)
    app.router.add_get(board + "/users", board_handlers.users)
    app.router.add_get(board + "/users/{user_id}", board_handlers.user)
    return app


def _lifetime(settings: Settings, metrics: BroadcasterMetrics) -> CleanupCtx:
    """The app's cleanup context: clients, then the parts, then the tasks; closed in reverse."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with (
            _clients(settings, app[readiness_key]) as clients,
            _components(settings, metrics, clients) as parts,
        ):
            app[components_key] = parts
            async with running(
                {
                    "board-consumer": parts.consumer.run(),
                    "board-removals": parts.removals.run(),
                    "board-moderation": parts.moderation.run(),
                    "board-holds": parts.holds.run(),
                    "fanout-ticker": parts.fanout.run(),
                }
            ):
                yield

    return ctx


@dataclass(frozen=True)
class _Clients:
    boards: RedisClient  # the boards (SCOREBOARD_BOARD_REDIS_URL, maybe a Redis Cluster)
    actions: RedisClient  # done markers, tickets, the applied channel (SCOREBOARD_REDIS_URL)
    pool: asyncpg.Pool


@asynccontextmanager
async def _clients(
    settings: Settings, readiness: dict[str, ReadinessCheck]
) -> AsyncIterator[_Clients]:
    # A Redis Cluster for a redis+cluster:// URL (docs/architecture.md "Redis Cluster layout").
    actions = create_redis_or_cluster(settings)
    boards = (
        create_redis_or_cluster(settings, settings.board_redis_url)
        if settings.board_redis_url
        else actions
    )
    for redis in (actions,) if boards is actions else (actions, boards):
        # redis-py retries a failed command 10 times with up to 1 s between tries (about 5 s
        # when Redis is down); the broadcaster has PostgreSQL to fall back on: it gives up sooner.
        redis.set_retry(Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.1), retries=2))
    pool = await create_pool(settings)

    async def redis_ready() -> None:
        await actions.ping()

    async def board_redis_ready() -> None:
        await boards.ping()

    async def postgres_ready() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    readiness["redis"] = redis_ready
    if boards is not actions:
        readiness["board-redis"] = board_redis_ready
    readiness["postgres"] = postgres_ready
    try:
        yield _Clients(boards, actions, pool)
    finally:
        await pool.close()
        await actions.aclose()
        if boards is not actions:
            await boards.aclose()


@asynccontextmanager
async def _components(
    settings: Settings, metrics: BroadcasterMetrics, clients: _Clients
) -> AsyncIterator[Components]:
    redis, pool = clients.boards, clients.pool
    board = RedisBoard(redis, settings.redis_prefix, actions=clients.actions)
    scores = PostgresScores(pool)
    moderation = ModerationBoard(redis, board)
    # Every rebuild syncs the bans before the board is marked built.
    sync = functools.partial(sync_board, moderation, pool, rebuild=True)
    rebuilder = Rebuilder(settings, board, scores, metrics, before_built=sync)
    reader = BoardReader(settings, board, scores, rebuilder, metrics)
    fanout = Fanout(settings, board, reader, metrics)
    periods = BoardPeriods(
        settings, PeriodBoards(redis), PostgresBoards(pool), pool, board.keys, rebuilder
    )
    fanout.subscriptions = Subscriptions(
        settings, redis, periods, metrics, fanout.slow, fanout.connections
    )
    try:
        yield Components(
            settings=settings,
            metrics=metrics,
            board=board,
            scores=scores,
            rebuilder=rebuilder,
            reader=reader,
            fanout=fanout,
            consumer=ChangeConsumer(
                settings, board, rebuilder, metrics, fanout.nudge, periods=periods
            ),
            removals=RemovalWatcher(settings, board, scores, metrics, fanout.nudge),
            holds=HoldWatcher(settings, board, scores, fanout.nudge),
            periods=periods,
            moderation=ModerationWatcher(
                settings, moderation, pool, periods, fanout.nudge, reader.forget_unknown
            ),
        )
    finally:
        # What the parts started of their own: close handshakes, a background rebuild.
        await fanout.close()
        await rebuilder.close()
        await periods.close()


async def _drain(app: web.Application) -> None:
    await app[components_key].fanout.drain()


async def _board_ready(app: web.Application) -> None:
    # Until the consumer has its positions and the board is built, this replica could show a
    # board that misses changes: keep it out of rotation until then (not after: a Kafka outage
    # later leaves it serving the board it has).
    if not app[components_key].consumer.ready.is_set():
        raise RuntimeError("board not initialised yet")
