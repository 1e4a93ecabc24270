"""A store that does not answer becomes 503 with Retry-After; other failures stay 500.

Each case runs with the outage middleware and with the rejection middleware given the outages.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Middleware
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from structlog.testing import capture_logs

from common.addresses import TrustedProxies
from common.outages import CONNECTION_FAILURES, UNAVAILABLE_DETAIL, Outages, outage_middleware
from common.rejections import rejection_middleware
from common.web import create_base_app

Client = TestClient[web.Request, web.Application]
ClientFactory = Callable[[web.Application], Awaitable[Client]]

FAILURES: dict[str, BaseException] = {
    "refused": ConnectionRefusedError("refused"),
    "timeout": TimeoutError(),
    "postgres": asyncpg.CannotConnectNowError("starting up"),
    "pool": asyncpg.InterfaceError("pool is closing"),
    "redis": RedisConnectionError("down"),
    "bug": asyncpg.UniqueViolationError("duplicate key"),
    "redis-bug": ResponseError("WRONGTYPE"),
}


async def _handler(request: web.Request) -> web.Response:
    raise FAILURES[request.match_info["kind"]]


Mount = Callable[..., Middleware]


def _in_rejections(
    failures: tuple[type[BaseException], ...] = CONNECTION_FAILURES,
    *,
    retry_after_s: int = 2,
    detail: str = UNAVAILABLE_DETAIL,
) -> Middleware:
    return rejection_middleware(TrustedProxies(), outages=Outages(failures, retry_after_s, detail))


@pytest.fixture(params=[outage_middleware, _in_rejections], ids=["alone", "in_rejections"])
def mount(request: pytest.FixtureRequest) -> Mount:
    mount: Mount = request.param
    return mount


async def _client(aiohttp_client: ClientFactory, middleware: Middleware) -> Client:
    app = create_base_app("test")
    app.middlewares.append(middleware)
    app.router.add_get("/{kind}", _handler)
    return await aiohttp_client(app)


@pytest.mark.parametrize("kind", ["refused", "timeout", "postgres", "pool", "redis"])
async def test_connection_failures_are_503_with_retry_after(
    aiohttp_client: ClientFactory, mount: Mount, kind: str
) -> None:
    client = await _client(aiohttp_client, mount())
    with capture_logs() as logs:
        resp = await client.get(f"/{kind}")
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "2"
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["detail"] == "a backing service is unavailable; retry shortly"
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["dependency_unavailable"]
    assert not [e for e in logs if e["event"] == "security"]  # a 503 is no rejection


@pytest.mark.parametrize("kind", ["bug", "redis-bug"])
async def test_other_failures_stay_500(
    aiohttp_client: ClientFactory, mount: Mount, kind: str
) -> None:
    client = await _client(aiohttp_client, mount())
    assert (await client.get(f"/{kind}")).status == 500


async def test_a_service_names_its_own_outages_and_retry_after(
    aiohttp_client: ClientFactory, mount: Mount
) -> None:
    only_redis = mount((RedisError,), retry_after_s=1, detail="a dependency is unavailable")
    client = await _client(aiohttp_client, only_redis)
    resp = await client.get("/redis-bug")  # every Redis error, for a service that needs Redis
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"
    assert (await resp.json())["detail"] == "a dependency is unavailable"
    assert (await client.get("/refused")).status == 500
