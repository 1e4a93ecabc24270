"""Wiring: the auth service's aiohttp application and the resources it owns."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from auth.accounts import Accounts
from auth.components import Components, components_key
from auth.handlers import add_routes
from auth.keys import KeyStore
from auth.metrics import AuthMetrics
from auth.passwords import Passwords
from auth.revocations import Revocations
from auth.security import security_middleware
from auth.sessions import Sessions
from auth.settings import Settings
from auth.throttle import LoginThrottle
from auth.tokens import Tokens
from common.health import readiness_key, registry_key
from common.outages import outage_middleware
from common.postgres import create_pool
from common.redis_client import create_redis
from common.tasks import running
from common.web import create_base_app

log = structlog.get_logger(__name__)

settings_key = web.AppKey("settings", Settings)
pool_key = web.AppKey("postgres_pool", asyncpg.Pool)
redis_key = web.AppKey("redis", aioredis.Redis)

# Expired refresh tokens and dead sessions are swept this often (any replica may do it).
_PRUNE_INTERVAL_S = 3600.0


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in cleanup contexts."""
    app = create_base_app(settings.service_name)
    app.middlewares.append(security_middleware(trust_forwarded_for=settings.trust_forwarded_for))
    app.middlewares.append(outage_middleware())
    app[settings_key] = settings
    app.cleanup_ctx.append(_postgres)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(_components)
    add_routes(app)
    return app


async def _postgres(app: web.Application) -> AsyncIterator[None]:
    pool = await create_pool(app[settings_key])
    app[pool_key] = pool

    async def check() -> None:
        await pool.fetchval("SELECT 1")

    app[readiness_key]["postgres"] = check
    yield
    await pool.close()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    client = create_redis(app[settings_key])
    app[redis_key] = client

    async def check() -> None:
        await client.ping()

    app[readiness_key]["redis"] = check
    yield
    await client.aclose()


async def _components(app: web.Application) -> AsyncIterator[None]:
    settings, pool, redis = app[settings_key], app[pool_key], app[redis_key]
    metrics = AuthMetrics.create(app[registry_key])
    passwords = Passwords(settings, metrics.password_seconds)
    keystore = KeyStore(pool, settings)
    try:
        await passwords.start()
        await keystore.start()
        throttle = LoginThrottle(
            redis,
            settings.redis_prefix,
            per_name=settings.login_fail_per_name,
            per_address=settings.login_fail_per_address,
            window_s=settings.login_fail_window_s,
        )
        revocations = Revocations(redis, settings.redis_prefix, settings.access_ttl_s)
        sessions = Sessions(pool, revocations, settings.refresh_ttl_s)
        app[components_key] = Components(
            settings=settings,
            accounts=Accounts(pool, passwords, throttle),
            sessions=sessions,
            tokens=Tokens(keystore, settings),
            keystore=keystore,
            metrics=metrics,
        )

        async def signing_key() -> None:
            keystore.signing_key()

        app[readiness_key]["signing_key"] = signing_key
        async with running(
            {
                "auth-key-reloader": keystore.run_reloader(),
                "auth-session-pruner": _prune_forever(sessions),
            }
        ):
            yield
    finally:
        passwords.close()


async def _prune_forever(sessions: Sessions) -> None:
    while True:
        await asyncio.sleep(_PRUNE_INTERVAL_S)
        try:
            deleted = await sessions.prune()
            log.info("sessions_pruned", rows=deleted)
        except Exception:
            # A failed sweep only leaves dead rows around until the next one.
            log.exception("session_prune_failed")
