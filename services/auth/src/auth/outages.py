"""PostgreSQL or Redis unreachable: answer 503 with Retry-After (retrying is safe), not 500.

Every auth endpoint is safe to retry: nothing is half-written (multi-row changes are single
transactions) and a failed login attempt was not counted if Redis could not count it.
"""

from __future__ import annotations

import asyncpg
import structlog
from aiohttp import web
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.middlewares import Handler
from common.problems import ServiceUnavailable

log = structlog.get_logger(__name__)

# Connection-level failures only; a constraint violation or a bad query is a bug, and stays 500.
_OUTAGES = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
)


class DependencyUnavailable(ServiceUnavailable):
    """503: a store this request needs did not answer."""

    def __init__(self) -> None:
        super().__init__(
            "a backing service is unavailable; retry shortly", headers={"Retry-After": "2"}
        )


@web.middleware
async def outage_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn connection failures to PostgreSQL/Redis into :class:`DependencyUnavailable`."""
    try:
        return await handler(request)
    except _OUTAGES as exc:
        log.error("dependency_unavailable", path=request.path, error=repr(exc))
        raise DependencyUnavailable() from exc
