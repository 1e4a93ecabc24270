"""Wiring: the gateway service's aiohttp application and the resources it owns.

Resources open and close in ``cleanup_ctx`` (Redis; the HTTP client session with the JWKS cache
and the proxy; the Kafka producer; the ``applied`` subscription) and live under typed AppKeys.
Kafka and the auth service may be down when the gateway starts: their clients connect in the
background and ``/readyz`` reports them until they do.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import redis.asyncio as aioredis
import structlog
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from common.health import readiness_key, registry_key
from common.redis_client import REDIS_TIMEOUT_S, create_redis
from common.redis_pipeline import PipelinedRedis
from common.tasks import stop as stop_task
from common.web import create_base_app
from gateway import handlers, proxy
from gateway.admission import Admission, admission_key
from gateway.authn import Authenticator, JwksCache, TokenVerifier, authenticator_key, jwks_key
from gateway.catalog import Catalog, catalog_key
from gateway.metrics import GatewayMetrics, metrics_key
from gateway.publisher import CommandPublisher, publisher_key
from gateway.ratelimit import RateLimiter, RatePolicy, rate_limiter_key, rate_policy_key
from gateway.security import rejection_middleware, trusted_proxies_key
from gateway.settings import Settings, settings_key
from gateway.tickets import TicketSigner, TicketStore, ticket_store_key
from gateway.waiters import AppliedWaiters, waiters_key
from gateway.webpage import setup_webpage

log = structlog.get_logger(__name__)

redis_key = web.AppKey("redis", aioredis.Redis)
pipelined_redis_key = web.AppKey("pipelined_redis", PipelinedRedis)

# Paths the proxy forwards verbatim only match safe characters (no dots, no encoded slashes).
_SEGMENTS = r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*"


class JwksNotFetched(Exception):
    """Readiness: auth's keys have not been fetched yet."""


def _background(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(coro, name=name)

    def _done(t: asyncio.Task[None]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.error("background_task_failed", task=name, error=repr(t.exception()))

    task.add_done_callback(_done)
    return task


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    redis = create_redis(settings)
    app[redis_key] = redis
    # The update path's one script runs on an auto-pipelined connection of its own.
    app[pipelined_redis_key] = pipelined = PipelinedRedis(
        settings.redis_url, timeout_s=REDIS_TIMEOUT_S, connect_timeout_s=REDIS_TIMEOUT_S
    )
    app[rate_limiter_key] = RateLimiter(redis, settings.redis_prefix)
    app[ticket_store_key] = TicketStore(
        redis,
        settings.redis_prefix,
        TicketSigner(settings.action_hmac_keys, version=settings.action_hash_version),
        ttl_s=settings.ticket_ttl_s,
        done_ttl_s=settings.done_ttl_s,
        claim_stale_after_s=settings.claim_stale_after_s,
    )

    async def redis_ready() -> None:
        await redis.ping()

    app[readiness_key]["redis"] = redis_ready
    yield
    await pipelined.aclose()
    await redis.aclose()


async def _http_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[settings_key]
    metrics = app[metrics_key]
    # No session-wide total timeout; requests set their own. (Proxied WebSockets do not use this
    # pool: each is a raw connection of its own, see gateway.wsupstream.)
    session = ClientSession(
        connector=TCPConnector(limit=200, limit_per_host=100),
        timeout=ClientTimeout(total=None, sock_connect=2.0),
    )
    verifier: TokenVerifier | None = None

    def on_keys_changed() -> None:
        if verifier is not None:
            verifier.clear_cache()

    jwks = JwksCache(
        session,
        settings.auth_url,
        min_refresh_s=settings.jwks_min_refresh_s,
        metrics=metrics,
        on_change=on_keys_changed,
    )
    verifier = TokenVerifier(
        jwks,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        leeway_s=settings.jwt_leeway_s,
        max_lifetime_s=settings.jwt_max_lifetime_s,
        cache_size=settings.token_cache_size,
    )
    app[jwks_key] = jwks
    authenticator = Authenticator(verifier, app[redis_key], settings.redis_prefix)
    app[authenticator_key] = authenticator
    app[admission_key] = Admission(
        app[pipelined_redis_key], authenticator, app[ticket_store_key], app[rate_limiter_key]
    )
    app[proxy.proxy_key] = proxy.Proxy(session, settings, metrics)

    async def jwks_ready() -> None:
        if not jwks.fetched:
            raise JwksNotFetched("auth JWKS not fetched yet")

    app[readiness_key]["auth_jwks"] = jwks_ready
    refresher = _background(jwks.run(settings.jwks_refresh_interval_s), "jwks-refresh")
    yield
    await stop_task(refresher)
    await session.close()


async def _kafka_ctx(app: web.Application) -> AsyncIterator[None]:
    publisher = CommandPublisher(app[settings_key], app[metrics_key])
    app[publisher_key] = publisher
    app[readiness_key]["kafka"] = publisher.check_ready
    starter = _background(publisher.run(), "kafka-producer-start")
    yield
    await stop_task(starter)
    await publisher.close()


async def _applied_listener_ctx(app: web.Application) -> AsyncIterator[None]:
    channel = f"{app[settings_key].redis_prefix}applied"
    listener = _background(app[waiters_key].listen(app[redis_key], channel), "applied-listener")
    yield
    await stop_task(listener)


async def _close_websockets(app: web.Application) -> None:
    await app[proxy.proxy_key].close_clients()


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in cleanup contexts."""
    app = create_base_app(settings.service_name)
    # Innermost: renders problems before the shared metrics middleware records the status.
    app.middlewares.append(rejection_middleware)
    app[settings_key] = settings
    app[metrics_key] = GatewayMetrics.create(app[registry_key])
    app[trusted_proxies_key] = tuple(settings.trusted_proxies)
    app[catalog_key] = Catalog(settings.action_catalog)
    app[rate_policy_key] = RatePolicy.from_settings(settings)
    app[waiters_key] = AppliedWaiters(linger_s=settings.applied_linger_s)
    if settings.uses_dev_hmac_key:
        log.warning("dev_hmac_key_in_use", hint="set SCOREBOARD_ACTION_HMAC_KEYS in production")

    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_http_ctx)
    app.cleanup_ctx.append(_kafka_ctx)
    app.cleanup_ctx.append(_applied_listener_ctx)
    app.on_shutdown.append(_close_websockets)

    router = app.router
    router.add_get("/api/actions/types", handlers.action_types)
    router.add_post("/api/actions", handlers.issue_ticket)
    router.add_post("/api/scoreboard/update", handlers.submit_update)
    router.add_get("/api/scoreboard/top", proxy.board_route)
    router.add_get(r"/api/scoreboard/users/{user_id:[A-Za-z0-9-]{1,64}}", proxy.board_route)
    router.add_get("/api/scoreboard/me", proxy.me_route)
    router.add_get("/ws/scoreboard", proxy.ws_route)
    router.add_route("*", "/api/auth/{tail:" + _SEGMENTS + "}", proxy.auth_route)
    router.add_get("/.well-known/jwks.json", proxy.jwks_route)
    setup_webpage(app, settings.static_dir)
    return app
