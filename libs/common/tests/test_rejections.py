"""Every rejection is one security event (reason, status, who, address) and counted by reason."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter
from structlog.testing import capture_logs

from common.addresses import TrustedProxies, client_address_key
from common.problems import BadRequest, Forbidden, NotFound, Problem, ServiceUnavailable
from common.rejections import Rejected, Rejection, rejection_middleware, rejection_reason
from common.web import create_base_app

Client = TestClient[web.Request, web.Application]
EVERYONE = TrustedProxies(every_peer=True)
ClientFactory = Callable[[web.Application], Awaitable[Client]]


class Banned(Forbidden, Rejection):
    reason = "banned"
    username = "mallory"


class BadTicket(BadRequest, Rejection):
    reason = "ticket_expired"


@pytest.mark.parametrize(
    ("error", "every", "expected"),
    [
        (Banned("no"), True, "banned"),
        (Banned("no"), False, "banned"),
        (BadTicket("no"), False, "ticket_expired"),  # its own reason before invalid_request
        (BadRequest("no"), False, "invalid_request"),
        (NotFound("no"), True, "NotFound"),
        (NotFound("no"), False, None),
        (
            web.HTTPRequestEntityTooLarge(max_size=1, actual_size=2),
            True,
            "request_entity_too_large",
        ),
        (web.HTTPNotFound(), False, None),
        (ServiceUnavailable("down"), True, None),  # not a client error
        (Problem("boom"), True, None),
    ],
)
def test_rejection_reason(error: Rejected, every: bool, expected: str | None) -> None:
    assert rejection_reason(error, every_client_error=every) == expected


async def _handler(request: web.Request) -> web.Response:
    kind = request.match_info["kind"]
    if kind == "banned":
        raise Banned("you are banned")
    if kind == "missing":
        raise web.HTTPNotFound()
    if kind == "down":
        raise ServiceUnavailable("down")
    return web.json_response({"address": request[client_address_key]})


def _who(request: web.Request, error: Rejected) -> Mapping[str, object]:
    return {"username": getattr(error, "username", None)}


async def _client(aiohttp_client: ClientFactory, middleware: Middleware) -> Client:
    app = create_base_app("test")
    app.middlewares.append(middleware)
    app.router.add_get("/{kind}", _handler)
    return await aiohttp_client(app)


async def test_a_rejection_is_logged_with_who_and_where_then_rendered(
    aiohttp_client: ClientFactory,
) -> None:
    client = await _client(aiohttp_client, rejection_middleware(EVERYONE, identity=_who))
    with capture_logs() as logs:
        resp = await client.get(
            "/banned", headers={"X-Forwarded-For": "203.0.113.9", "X-Request-ID": "rid-7"}
        )
    assert resp.status == 403
    assert resp.content_type == "application/problem+json"
    assert [e for e in logs if e["event"] == "security"] == [
        {
            "event": "security",
            "log_level": "warning",
            "reason": "banned",
            "status": 403,
            "username": "mallory",
            "address": "203.0.113.9",
            "method": "GET",
            "path": "/banned",
            "request_id": "rid-7",
        }
    ]


async def test_rejections_are_counted_by_reason_and_only_rejections_when_asked(
    aiohttp_client: ClientFactory,
) -> None:
    registry = CollectorRegistry()
    counter = Counter("rejections", "Rejected requests", ["reason"], registry=registry)
    client = await _client(
        aiohttp_client,
        rejection_middleware(
            EVERYONE,
            count=lambda request, reason: counter.labels(reason).inc(),
            every_client_error=False,
        ),
    )
    with capture_logs() as logs:
        assert (await client.get("/banned")).status == 403
        assert (await client.get("/banned")).status == 403
        assert (await client.get("/missing")).status == 404
        assert (await client.get("/down")).status == 503
    assert [e["reason"] for e in logs if e["event"] == "security"] == ["banned", "banned"]
    assert registry.get_sample_value("rejections_total", {"reason": "banned"}) == 2


async def test_every_client_error_is_logged_by_default(aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, rejection_middleware(EVERYONE))
    with capture_logs() as logs:
        assert (await client.get("/missing")).status == 404
    events = [e for e in logs if e["event"] == "security"]
    assert [e["reason"] for e in events] == ["not_found"]
    assert "username" not in events[0]


async def test_handlers_see_the_resolved_client_address(aiohttp_client: ClientFactory) -> None:
    client = await _client(aiohttp_client, rejection_middleware(EVERYONE))
    resp = await client.get("/ok", headers={"X-Forwarded-For": "6.6.6.6, 198.51.100.23"})
    assert (await resp.json()) == {"address": "198.51.100.23"}
