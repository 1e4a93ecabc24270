"""Every service's app starts here: the shared middlewares and the operator endpoints.

The pieces live by concept: :mod:`common.middlewares` (problem+json, request ids, request
metrics), :mod:`common.bodies` (JSON in and out), :mod:`common.health` (/healthz, /readyz,
/metrics) and :mod:`common.runner` (serving a process).
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from common.bodies import MAX_BODY
from common.health import add_health_routes, readiness_key, registry_key
from common.metrics import runtime_metrics
from common.middlewares import metrics_middleware, problem_middleware


def create_base_app(
    service: str, registry: CollectorRegistry | None = None, *, admin_port: int = 0
) -> web.Application:
    """An app with the shared middlewares and /healthz, /readyz, /metrics.

    Register readiness checks with ``app[readiness_key]["postgres"] = check``. With an
    ``admin_port``, the operator endpoints answer in full only there (common.health).
    """
    registry = registry or CollectorRegistry()
    runtime_metrics(registry)
    app = web.Application(
        client_max_size=MAX_BODY,
        # Metrics outermost, so they record the status of the rendered problem responses.
        middlewares=[metrics_middleware(service, registry), problem_middleware],
    )
    app[registry_key] = registry
    app[readiness_key] = {}
    add_health_routes(app, admin_port)
    app.on_response_prepare.append(_plain_server_header)
    return app


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``Server: scoreboard``: no library or interpreter versions for a scanner to match."""
    response.headers["Server"] = "scoreboard"
