"""Wiring: the gateway service's aiohttp application and the resources it owns.

One cleanup context opens the resources (Redis, the auto-pipelined Redis connection of the
update path, the HTTP client session for the JWKS and the proxy), builds the
:class:`~gateway.components.Components` every handler reaches through one AppKey, and runs the
background tasks: the JWKS refresher, the Kafka producer's start (Kafka and the auth service may
be down when the gateway starts: ``/readyz`` reports them until they answer) and the ``applied``
listener. On shutdown proxied WebSockets are closed first, then the tasks stop, then the clients.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from common.health import readiness_key, registry_key
from common.keyspace import applied_channel
from common.redis_client import REDIS_TIMEOUT_S, create_redis
from common.tasks import running
from common.web import create_base_app
from gateway import handlers
from gateway.accounts import Authenticator
from gateway.admission import Admission
from gateway.board_cache import BoardCache
from gateway.catalog import Catalog
from gateway.claims import Claims
from gateway.components import Components, components_key
from gateway.earning import Budget, EarningRules
from gateway.edge import edge_middlewares
from gateway.jwks import JwksCache
from gateway.metrics import GatewayMetrics
from gateway.proxy import Proxy
from gateway.publisher import CommandPublisher
from gateway.ratelimit import RateLimiter, RatePolicy
from gateway.redis_pipeline import PipelinedRedis
from gateway.settings import Settings
from gateway.signing import TicketSigner
from gateway.tickets import TicketStore
from gateway.tokens import TokenVerifier
from gateway.waiters import AppliedWaiters
from gateway.webpage import setup_webpage
from gateway.ws_admission import WebSocketSlots

log = structlog.get_logger(__name__)

# Paths the proxy forwards verbatim only match safe characters (no dots, no encoded slashes).
_SEGMENTS = r"[A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*"
# One path segment of the board routes (the broadcaster says 400 or 404 about its value).
_SEGMENT = r"[A-Za-z0-9_.-]{1,64}"


class JwksNotFetched(Exception):
    """Readiness: auth's keys have not been fetched yet."""


def create_app(settings: Settings) -> web.Application:
    """Build the app; resources open and close in its cleanup context."""
    app = create_base_app(settings.service_name, admin_port=settings.admin_port)
    # Innermost: renders problems before the shared metrics middleware records the status.
    app.middlewares.extend(edge_middlewares(settings))
    if settings.uses_dev_hmac_key:
        log.warning("dev_hmac_key_in_use", hint="set SCOREBOARD_ACTION_HMAC_KEYS in production")
    if settings.uses_dev_command_key:
        log.warning("dev_command_key_in_use", hint="set SCOREBOARD_COMMAND_KEYS in production")
    app.cleanup_ctx.append(lambda app: _components(app, settings))
    app.on_shutdown.append(_close_websockets)

    router = app.router
    router.add_get("/api/actions/types", handlers.action_types)
    router.add_post("/api/actions", handlers.issue_ticket)
    router.add_post("/api/scoreboard/update", handlers.submit_update)
    router.add_get("/api/scoreboard/top", handlers.board_route)
    router.add_get(r"/api/scoreboard/users/{user_id:[A-Za-z0-9-]{1,64}}", handlers.board_route)
    router.add_get("/api/scoreboard/me", handlers.me_route)
    router.add_get("/ws/scoreboard", handlers.ws_route)
    router.add_get("/api/boards", handlers.board_route)
    board = "/api/boards/{board:" + _SEGMENT + "}/{window:" + _SEGMENT + "}"
    router.add_get(board + "/top", handlers.board_route)
    router.add_get(board + "/users", handlers.board_route)
    router.add_get(board + "/users/{user_id:" + _SEGMENT + "}", handlers.board_user_route)
    router.add_get(board + "/around/{user_id:" + _SEGMENT + "}", handlers.board_user_route)
    router.add_route("*", "/api/auth/{tail:" + _SEGMENTS + "}", handlers.auth_route)
    router.add_get("/.well-known/jwks.json", handlers.jwks_route)
    setup_webpage(app, settings.static_dir)
    return app


async def _components(app: web.Application, settings: Settings) -> AsyncIterator[None]:
    prefix = settings.redis_prefix
    metrics = GatewayMetrics.create(app[registry_key])
    async with contextlib.AsyncExitStack() as stack:
        redis = create_redis(settings)
        stack.push_async_callback(redis.aclose)
        # The update path's one script runs on an auto-pipelined connection of its own.
        pipelined = PipelinedRedis(
            settings.redis_url, timeout_s=REDIS_TIMEOUT_S, connect_timeout_s=REDIS_TIMEOUT_S
        )
        stack.push_async_callback(pipelined.aclose)
        # No session-wide total timeout; requests set their own. (Proxied WebSockets do not use
        # this pool: each is a raw connection of its own, see gateway.wsupstream.)
        session = ClientSession(
            connector=TCPConnector(limit=200, limit_per_host=100),
            timeout=ClientTimeout(total=None, sock_connect=2.0),
        )
        stack.push_async_callback(session.close)

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
        catalog = Catalog(settings.action_catalog)
        earning = EarningRules(
            prefix,
            catalog,
            Budget.for_catalog(
                settings.action_catalog,
                updates_per_s=settings.update_rate_per_user,
                per_minute=settings.points_budget_per_minute,
            ),
        )
        signer = TicketSigner(settings.action_hmac_keys)
        limiter = RateLimiter(pipelined, prefix)
        claims = Claims(
            redis,
            pipelined,
            prefix,
            earning,
            done_ttl_s=settings.done_ttl_s,
            stale_after_s=settings.claim_stale_after_s,
        )
        publisher = CommandPublisher(settings, metrics, claims)
        stack.push_async_callback(publisher.close)
        parts = Components(
            settings=settings,
            metrics=metrics,
            catalog=catalog,
            rate_policy=RatePolicy.from_settings(settings),
            limiter=limiter,
            signer=signer,
            tickets=TicketStore(redis, prefix, earning, ttl_s=settings.ticket_ttl_s),
            claims=claims,
            authenticator=Authenticator(verifier, redis, prefix),
            admission=Admission(
                pipelined,
                prefix,
                catalog=catalog,
                signer=signer,
                claims=claims,
                limiter=limiter,
                earning=earning,
            ),
            publisher=publisher,
            waiters=AppliedWaiters(linger_s=settings.applied_linger_s),
            jwks=jwks,
            proxy=Proxy(session, settings, metrics),
            board_cache=BoardCache(settings.board_cache_ttl_s, metrics.board_cache),
            ws_slots=WebSocketSlots(
                per_bucket=settings.ws_max_per_address, total=settings.ws_max_connections
            ),
        )
        app[components_key] = parts

        async def redis_ready() -> None:
            await redis.ping()

        async def jwks_ready() -> None:
            if not jwks.fetched:
                raise JwksNotFetched("auth JWKS not fetched yet")

        app[readiness_key].update(
            redis=redis_ready, auth_jwks=jwks_ready, kafka=publisher.check_ready
        )
        async with running(
            {
                "jwks-refresh": jwks.run(settings.jwks_refresh_interval_s),
                "kafka-producer-start": publisher.run(),
                "applied-listener": parts.waiters.listen(redis, applied_channel(prefix)),
            }
        ):
            yield


async def _close_websockets(app: web.Application) -> None:
    await app[components_key].proxy.close_clients()
