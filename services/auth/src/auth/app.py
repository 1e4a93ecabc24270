"""Wiring: the auth service's aiohttp application and the resources it owns.

One cleanup context opens PostgreSQL and Redis, builds the :class:`Components` handlers reach
through one AppKey, and runs the background tasks (signing-key reloader, session pruner).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from auth.accounts import Accounts
from auth.components import Components, components_key
from auth.handlers import add_routes
from auth.keys import KeyStore
from auth.login_throttle import LoginThrottle, SlowDown
from auth.metrics import AuthMetrics
from auth.passwords import Passwords
from auth.revocations import Revocations
from auth.security import security_middleware
from auth.sessions import Sessions
from auth.settings import Settings
from auth.signup_throttle import SignupThrottle
from auth.tokens import Tokens
from common.gcra import Rate
from common.health import readiness_key, registry_key
from common.outages import outage_middleware
from common.postgres import create_pool
from common.redis_client import create_redis
from common.tasks import running
from common.web import create_base_app

log = structlog.get_logger(__name__)

# Expired refresh tokens and dead sessions are swept this often (any replica may do it).
_PRUNE_INTERVAL_S = 3600.0


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in a cleanup context."""
    app = create_base_app(settings.service_name, admin_port=settings.admin_port)
    app.middlewares.append(security_middleware(trust_forwarded_for=settings.trust_forwarded_for))
    app.middlewares.append(outage_middleware())
    app.cleanup_ctx.append(functools.partial(_components, settings))
    add_routes(app)
    return app


async def _components(settings: Settings, app: web.Application) -> AsyncIterator[None]:
    metrics = AuthMetrics.create(app[registry_key])
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(settings)
        stack.push_async_callback(pool.close)
        redis = create_redis(settings)
        stack.push_async_callback(redis.aclose)
        passwords = Passwords(settings, metrics.password_seconds)
        stack.callback(passwords.close)
        await passwords.start()
        keystore = KeyStore(pool, settings)
        await keystore.start()
        login_throttle = LoginThrottle(
            redis,
            settings.redis_prefix,
            per_name_and_address=settings.login_fail_per_name_and_address,
            per_name=settings.login_fail_per_name,
            per_address=settings.login_fail_per_address,
            window_s=settings.login_fail_window_s,
            slow_down=SlowDown(settings.login_delay_base_s, settings.login_delay_max_s),
        )
        signup_throttle = SignupThrottle(
            redis,
            settings.redis_prefix,
            per_address=Rate(
                settings.register_rate_per_address, settings.register_burst_per_address
            ),
            global_=Rate(settings.register_rate_global, settings.register_burst_global),
        )
        revocations = Revocations(redis, settings.redis_prefix, settings.revocation_ttl_s)
        sessions = Sessions(pool, revocations, settings.refresh_ttl_s)
        app[components_key] = Components(
            settings=settings,
            accounts=Accounts(pool, passwords, login_throttle, signup_throttle),
            sessions=sessions,
            tokens=Tokens(keystore, settings),
            keystore=keystore,
            metrics=metrics,
        )

        async def postgres() -> None:
            await pool.fetchval("SELECT 1")

        async def redis_answers() -> None:
            await redis.ping()

        async def signing_key() -> None:
            keystore.signing_key()

        app[readiness_key].update(postgres=postgres, redis=redis_answers, signing_key=signing_key)
        await stack.enter_async_context(
            running(
                {
                    "auth-key-reloader": keystore.run_reloader(),
                    "auth-session-pruner": _prune_forever(sessions),
                }
            )
        )
        yield


async def _prune_forever(sessions: Sessions) -> None:
    while True:
        await asyncio.sleep(_PRUNE_INTERVAL_S)
        try:
            deleted = await sessions.prune()
            log.info("sessions_pruned", rows=deleted)
        except Exception:
            # A failed sweep only leaves dead rows around until the next one.
            log.exception("session_prune_failed")
