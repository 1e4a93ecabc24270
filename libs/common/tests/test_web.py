"""The shared HTTP plumbing: problem+json, strict bodies, request ids, health endpoints."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pydantic import BaseModel, ConfigDict

from common.bodies import body_timeout_key, json_response, read_json
from common.health import readiness_key
from common.problems import Conflict
from common.runner import GC_GEN0_THRESHOLD, tune_gc
from common.web import create_base_app
from testkit.stack import free_port

JSON = {"Content-Type": "application/json"}
ClientFactory = Callable[[web.Application], Awaitable[TestClient[web.Request, web.Application]]]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


async def _echo(request: web.Request) -> web.Response:
    body = await read_json(request, Body)
    if body.name == "taken":
        raise Conflict("name taken")
    return json_response({"name": body.name}, 201)


async def _boom(_: web.Request) -> web.Response:
    raise RuntimeError("secret internals")


@pytest.fixture
async def client(aiohttp_client: ClientFactory) -> TestClient[web.Request, web.Application]:
    app = create_base_app("test")
    app.router.add_post("/echo", _echo)
    app.router.add_get("/boom", _boom)

    async def failing() -> None:
        raise ConnectionError("down")

    app[readiness_key]["thing"] = failing
    return await aiohttp_client(app)


async def test_valid_body(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post("/echo", json={"name": "x"})
    assert resp.status == 201
    assert resp.headers["X-Request-ID"]


async def test_each_request_without_an_id_gets_a_new_one(
    client: TestClient[web.Request, web.Application],
) -> None:
    ids = [(await client.post("/echo", json={"name": "x"})).headers["X-Request-ID"] for _ in "ab"]
    assert all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids)
    assert ids[0] != ids[1]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"data": b"{nope", "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b"name=x", "headers": {"Content-Type": "text/plain"}}, 415),
        ({"json": {"name": "x", "admin": True}}, 400),
        ({"json": [1, 2]}, 400),
        ({"json": {"name": "x" * 20_000}}, 413),
        ({"json": {"name": "taken"}}, 409),
        # Hostile bodies: a client error each, never a 500.
        ({"data": b"[" * 15_000, "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}", "headers": JSON}, 400),
        ({"data": b'{"name": "a", "name": "b"}', "headers": JSON}, 400),
        ({"data": b'{"name": 1' + b"0" * 5000 + b"}", "headers": JSON}, 400),
        ({"data": b'{"name": "' + bytes([0xFF, 0xFE]) + b'"}', "headers": JSON}, 400),
        ({"data": b"{}", "headers": {**JSON, "Content-Encoding": "gzip"}}, 400),
    ],
)
async def test_errors_are_problem_json(
    client: TestClient[web.Request, web.Application], kwargs: dict[str, object], status: int
) -> None:
    resp = await client.post("/echo", **kwargs)  # type: ignore[arg-type]
    assert resp.status == status
    assert resp.content_type == "application/problem+json"
    doc = await resp.json(content_type=None)
    assert doc["status"] == status
    assert {"type", "title", "detail"} <= doc.keys()


async def test_a_body_trickling_in_gets_408_and_the_connection_closes(
    aiohttp_client: ClientFactory,
) -> None:
    app = create_base_app("test")
    app.router.add_post("/echo", _echo)
    app[body_timeout_key] = 0.5
    client = await aiohttp_client(app)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    start = time.monotonic()
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )

    async def trickle() -> None:
        for _ in range(40):  # a byte every 0.1 s: 4 s, far beyond the timeout
            await asyncio.sleep(0.1)
            writer.write(b" ")
            await writer.drain()

    sending = asyncio.create_task(trickle())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
        answered = time.monotonic() - start
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"Connection: close" in head
        assert 0.4 < answered < 2.0
    finally:
        sending.cancel()
        writer.close()


async def test_405_names_the_allowed_methods_and_no_versions_are_served(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.delete("/echo")
    assert resp.status == 405
    assert resp.content_type == "application/problem+json"
    assert set(resp.headers["Allow"].split(",")) == {"POST"}
    assert resp.headers["Server"] == "scoreboard"


async def test_unexpected_error_hides_internals(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.get("/boom", headers={"X-Request-ID": "abc123"})
    assert resp.status == 500
    doc = await resp.json(content_type=None)
    assert "secret" not in doc["detail"]
    assert doc["request_id"] == "abc123"


async def test_health_ready_metrics(client: TestClient[web.Request, web.Application]) -> None:
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["thing"].startswith("failed")
    await client.get("/healthz")
    metrics = await (await client.get("/metrics")).text()
    assert 'scoreboard_http_requests_total{method="GET",route="/healthz"' in metrics
    # The standard runtime families, for saturation panels and alerts.
    for family in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "python_gc_collections_total",
        "python_info",
    ):
        assert f"\n{family}" in metrics, family


def test_tune_gc_freezes_the_startup_heap_and_widens_the_young_generation() -> None:
    threshold = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == GC_GEN0_THRESHOLD
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def test_operator_endpoints_answer_in_full_only_on_the_admin_port() -> None:
    public_port, admin_port = free_port(), free_port()
    app = create_base_app("test", admin_port=admin_port)

    async def failing() -> None:
        raise ConnectionError("down")

    app[readiness_key]["thing"] = failing
    runner = web.AppRunner(app)
    await runner.setup()
    for port in (public_port, admin_port):
        await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with aiohttp.ClientSession() as http:
            public, admin = f"http://127.0.0.1:{public_port}", f"http://127.0.0.1:{admin_port}"
            async with http.get(f"{public}/metrics") as resp:
                assert resp.status == 404
            async with http.get(f"{public}/readyz") as resp:
                assert (resp.status, await resp.json()) == (503, {"status": "unavailable"})
            async with http.get(f"{public}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"{admin}/metrics") as resp:
                assert resp.status == 200
                assert "scoreboard_http_requests_total" in await resp.text()
            async with http.get(f"{admin}/readyz") as resp:
                assert (await resp.json())["checks"]["thing"].startswith("failed")
    finally:
        await runner.cleanup()
