"""The operator endpoints every service serves: /healthz, /readyz and /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from common.bodies import json_response

ReadinessCheck = Callable[[], Awaitable[None]]

registry_key = web.AppKey("metrics_registry", CollectorRegistry)
readiness_key = web.AppKey("readiness_checks", dict[str, ReadinessCheck])


async def _healthz(_: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def _readyz(request: web.Request) -> web.Response:
    results: dict[str, str] = {}
    ok = True
    for name, check in request.app[readiness_key].items():
        try:
            await asyncio.wait_for(check(), timeout=2.0)
            results[name] = "ok"
        except Exception as exc:
            ok = False
            results[name] = f"failed: {type(exc).__name__}"
    return json_response(
        {"status": "ok" if ok else "unavailable", "checks": results}, 200 if ok else 503
    )


async def _metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[registry_key])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application) -> None:
    """Serve /healthz, /readyz (the checks under ``readiness_key``) and /metrics."""
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
