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
admin_port_key = web.AppKey("admin_port", int)


def on_admin_port(request: web.Request) -> bool:
    """Whether ``request`` came in on the operator port (always, when there is none)."""
    admin = request.app.get(admin_port_key, 0)
    if not admin or request.transport is None:
        return True
    sockname = request.transport.get_extra_info("sockname")
    return bool(sockname) and sockname[1] == admin


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
    body: dict[str, object] = {"status": "ok" if ok else "unavailable"}
    if on_admin_port(request):  # which dependency is down is for operators only
        body["checks"] = results
    return json_response(body, 200 if ok else 503)


async def _metrics(request: web.Request) -> web.Response:
    if not on_admin_port(request):
        raise web.HTTPNotFound()
    body = generate_latest(request.app[registry_key])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application, admin_port: int = 0) -> None:
    """Serve /healthz, /readyz (the checks under ``readiness_key``) and /metrics.

    With an ``admin_port``, /metrics and each check's state answer only there; the service port
    (the public one, for the gateway) answers /readyz with the status alone, for probes and
    load balancers, and /metrics with 404.
    """
    app[admin_port_key] = admin_port
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)
