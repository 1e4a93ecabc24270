"""The service as a whole: it starts, reports its dependencies and exposes metrics."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
PASSWORD = "correct horse battery"


async def test_ready_when_postgres_redis_and_a_signing_key_answer(client: Client) -> None:
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body["checks"] == {"postgres": "ok", "redis": "ok", "signing_key": "ok"}
    assert (await client.get("/healthz")).status == 200


async def test_every_rejection_is_logged_as_a_security_event(client: Client) -> None:
    name = f"l_{uuid.uuid4().hex[:12]}"
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201
    with capture_logs() as logs:
        resp = await client.post(
            "/api/auth/login",
            json={"username": name, "password": "wrong password"},
            headers={"X-Forwarded-For": "192.0.2.1, 198.51.100.23", "X-Request-ID": "req-42"},
        )
        assert resp.status == 401
        resp = await client.post("/api/auth/register", json={"username": "x", "password": "y"})
        assert resp.status == 400
        resp = await client.post("/api/auth/logout")
        assert resp.status == 401
    events = [e for e in logs if e["event"] == "security"]
    assert events[0] == {
        "event": "security",
        "log_level": "warning",
        "reason": "wrong_password",
        "status": 401,
        "username": name,
        "address": "198.51.100.23",
        "method": "POST",
        "path": "/api/auth/login",
        "request_id": "req-42",
    }
    assert [e["reason"] for e in events[1:]] == ["invalid_request", "missing_token"]
    assert "wrong password" not in repr(logs)


async def test_oversized_bodies_are_refused(client: Client) -> None:
    resp = await client.post(
        "/api/auth/register", json={"username": "big_body", "password": "p" * 20_000}
    )
    assert resp.status == 413
    assert resp.content_type == "application/problem+json"


async def test_redis_down_means_503_for_login_and_registration(
    make_client: MakeClient, pg: asyncpg.Connection
) -> None:
    # Port 1 on localhost: nothing listens, connections are refused at once.
    client = await make_client(redis_url="redis://127.0.0.1:1/0")
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["redis"].startswith("failed")
    name = f"o_{uuid.uuid4().hex[:12]}"
    # Both throttles live in Redis: without them nothing is hashed (they fail closed).
    for path in ("/api/auth/register", "/api/auth/login"):
        resp = await client.post(path, json={"username": name, "password": PASSWORD})
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "2"
        assert resp.content_type == "application/problem+json"
    assert await pg.fetchval("SELECT count(*) FROM users WHERE username = $1", name) == 0
