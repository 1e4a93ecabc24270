"""Wiring: health and readiness with dependencies up or down, metrics, security events."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import pytest
from structlog.testing import capture_logs

from common.health import registry_key
from services.gateway.tests.support import Client, MakeGateway, TokenMint, bearer

TAP = {"action_type": "tap"}


async def test_ready_when_redis_kafka_and_jwks_answer(gateway: Client) -> None:
    assert (await gateway.get("/healthz")).status == 200
    resp = await gateway.get("/readyz")
    assert resp.status == 200
    assert (await resp.json())["checks"] == {"redis": "ok", "auth_jwks": "ok", "kafka": "ok"}


async def test_starts_without_kafka_and_auth_and_says_so(
    make_gateway: MakeGateway, mint: TokenMint, unused_tcp_port_factory: object
) -> None:
    assert callable(unused_tcp_port_factory)
    kafka_port, auth_port = unused_tcp_port_factory(), unused_tcp_port_factory()
    client = await make_gateway(
        wait_kafka=False,
        kafka_bootstrap=f"127.0.0.1:{kafka_port}",
        auth_url=f"http://127.0.0.1:{auth_port}",
    )
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    checks = (await resp.json())["checks"]
    assert checks["redis"] == "ok"
    assert checks["kafka"].startswith("failed")
    assert checks["auth_jwks"].startswith("failed")
    # Without auth's keys no token can be judged: that is the gateway's outage, not a 401.
    resp = await client.post(
        "/api/actions", json={"action_type": "tap"}, headers=bearer(mint.mint())
    )
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "1"


async def test_redis_down_is_503_not_500(
    make_gateway: MakeGateway, mint: TokenMint, unused_tcp_port: int
) -> None:
    client = await make_gateway(
        wait_kafka=False, redis_url=f"redis://127.0.0.1:{unused_tcp_port}/0"
    )
    resp = await client.post(
        "/api/actions", json={"action_type": "tap"}, headers=bearer(mint.mint())
    )
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    # The update path's admission runs on its own pipelined connection: the same answer.
    update = {"action_id": str(uuid.uuid4()), "action_type": "tap", "action_hash": "x" * 43}
    resp = await client.post("/api/scoreboard/update", json=update, headers=bearer(mint.mint()))
    assert resp.status == 503
    assert resp.content_type == "application/problem+json"
    ready = await client.get("/readyz")
    assert (await ready.json())["checks"]["redis"].startswith("failed")


async def test_rejections_are_counted_and_logged_as_security_events(
    gateway: Client, mint: TokenMint
) -> None:
    user_id = uuid.uuid4()
    with capture_logs() as logs:
        await gateway.post("/api/actions", json={"action_type": "tap"})
        await gateway.post(
            "/api/actions",
            json={"action_type": "nope"},
            headers={**bearer(mint.mint(user_id)), "X-Request-ID": "rid-1"},
        )
    events = [e for e in logs if e["event"] == "security"]
    assert [e["reason"] for e in events] == ["token_missing", "unknown_action_type"]
    assert events[1]["user"] == str(user_id)
    assert events[1]["address"] == "127.0.0.1"
    assert events[1]["request_id"] == "rid-1"
    registry = gateway.app[registry_key]
    sample = registry.get_sample_value
    assert sample("scoreboard_gateway_rejections_total", {"reason": "token_missing"}) == 1
    # The shared request metrics see the real status, not a 500.
    labels = {"service": "gateway", "method": "POST", "route": "/api/actions", "status": "401"}
    assert sample("scoreboard_http_requests_total", labels) == 1


async def test_shutdown_closes_websockets_with_service_restart(
    make_gateway: MakeGateway,
) -> None:
    client = await make_gateway(wait_kafka=False)
    ws = await client.ws_connect("/ws/scoreboard")
    assert (await ws.receive(timeout=5)).type is aiohttp.WSMsgType.TEXT
    stopping = asyncio.create_task(client.server.close())
    msg = await ws.receive(timeout=5)
    assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 1012)
    await ws.close()
    await stopping


@pytest.mark.parametrize("path", ["/api/scoreboard/update", "/api/actions"])
async def test_bodies_must_be_json(gateway: Client, mint: TokenMint, path: str) -> None:
    headers = {**bearer(mint.mint()), "Content-Type": "text/plain"}
    resp = await gateway.post(path, data=b"action_type=tap", headers=headers)
    assert resp.status == 415
    resp = await gateway.post(path, json={"pad": "x" * 20_000}, headers=bearer(mint.mint()))
    assert resp.status == 413
