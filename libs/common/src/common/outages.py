"""A store that does not answer: 503 with Retry-After (retrying the request is safe), not 500.

:func:`outage_middleware` turns the failures a service names into :class:`DependencyUnavailable`.
Mount it inside :func:`common.rejections.rejection_middleware`, or right inside the problem
middleware when a service has no rejections; or give the rejection middleware the
:class:`Outages` to do both in one (one coroutine frame less per request).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.problems import ServiceUnavailable

log = structlog.get_logger(__name__)

# Connection-level failures of PostgreSQL and Redis. A constraint violation or a bad query is a
# bug, and stays a 500.
CONNECTION_FAILURES: Final[tuple[type[BaseException], ...]] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    RedisConnectionError,
    RedisTimeoutError,
)

UNAVAILABLE_DETAIL: Final = "a backing service is unavailable; retry shortly"


class DependencyUnavailable(ServiceUnavailable):
    """503: a store this request needs did not answer; ``Retry-After`` in whole seconds."""

    def __init__(self, detail: str = UNAVAILABLE_DETAIL, *, retry_after_s: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after_s)})


@dataclass(frozen=True)
class Outages:
    """Which failures mean a store did not answer, and the 503 they become."""

    failures: tuple[type[BaseException], ...] = CONNECTION_FAILURES
    retry_after_s: int = 2
    detail: str = UNAVAILABLE_DETAIL

    def unavailable(self, request: web.Request, exc: BaseException) -> DependencyUnavailable:
        """Log ``exc`` once (``dependency_unavailable``); the problem to raise instead."""
        log.error("dependency_unavailable", path=request.path, error=repr(exc))
        return DependencyUnavailable(self.detail, retry_after_s=self.retry_after_s)


def outage_middleware(
    failures: tuple[type[BaseException], ...] = CONNECTION_FAILURES,
    *,
    retry_after_s: int = 2,
    detail: str = UNAVAILABLE_DETAIL,
) -> Middleware:
    """Log each of ``failures`` once (``dependency_unavailable``) and answer
    :class:`DependencyUnavailable` instead."""
    outages = Outages(failures, retry_after_s, detail)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except outages.failures as exc:
            raise outages.unavailable(request, exc) from exc

    return middleware
