"""Serving a service process: one runner for every service's ``__main__``."""

from __future__ import annotations

import argparse
import gc
import socket
from collections.abc import Callable
from typing import TypeVar

import structlog
import uvloop
from aiohttp import web

from common.bodies import body_timeout_key
from common.cli import add_version
from common.logs import configure_logging
from common.settings import CommonSettings
from common.tracing import configure_tracing

log = structlog.get_logger(__name__)

GC_GEN0_THRESHOLD = 20_000  # allocations between young collections (CPython default: 700)


S = TypeVar("S", bound=CommonSettings)


def serve(
    settings_type: type[S],
    create_app: Callable[[S], web.Application],
    argv: list[str] | None = None,
) -> None:
    """The ``main`` of a service: parse ``--help``/``--version``, load settings, log, trace,
    serve."""
    package = settings_type.__module__.split(".")[0]
    parser = argparse.ArgumentParser(
        description=f"serve the Scoreboard {package} service "
        "until SIGTERM; every setting is a SCOREBOARD_* environment variable (see the README)"
    )
    add_version(parser, package).parse_args(argv)
    settings = settings_type.load()
    configure_logging(settings.service_name, settings.log_level, json=settings.log_json)
    configure_tracing(settings.service_name, settings.otel_exporter_endpoint)
    app = create_app(settings)
    app[body_timeout_key] = settings.http_body_timeout_s
    run(
        app,
        settings.host,
        settings.port,
        reuse_port=settings.reuse_port,
        admin_port=settings.admin_port,
        keepalive_s=settings.http_keepalive_s,
    )


def tune_gc() -> None:
    """Keep the garbage collector off the request path's back.

    Everything imported and built before serving lives as long as the process: ``gc.freeze``
    moves it out of the collector's sight, so full collections no longer rescan it. A larger
    first generation makes young collections rarer; request objects mostly die before one.
    Measured with bench_e2e_latency at 1,000 updates/s, alternating five runs each way: p99
    193-275 ms with this, 258-419 ms without (lower in all five pairs; CPU per update the same):
    the collector's pauses were a good part of the tail.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, 20, 20)


def run(
    app: web.Application,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    admin_port: int = 0,
    shutdown_timeout: float = 10.0,
    keepalive_s: float = 75.0,
) -> None:
    """Serve until SIGTERM/SIGINT, then drain gracefully (cleanup contexts close resources).

    The event loop is uvloop's (libuv): the services spend most of their CPU in event-loop
    machinery (transports, timers, task switches), which uvloop runs in C, so the same process
    serves more requests per core (see bench/bench_e2e_latency.py).

    With ``admin_port`` the same app also listens there: the operator endpoints answer in full
    only on that socket (:func:`common.health.add_health_routes`).

    ``keepalive_s`` closes an idle connection, and one whose request headers are still arriving
    (aiohttp starts the timer when the connection opens and does not restart it per byte), so
    a client trickling its headers holds a socket for that long at most. aiohttp also caps a
    request line and each header at 8,190 bytes and a request at 128 headers (400 beyond).
    """
    log.info(
        "listening",
        host=host,
        port=port,
        admin_port=admin_port or None,
        loop="uvloop",
        reuse_port=reuse_port,
    )
    tune_gc()
    web.run_app(
        app,
        host=host,
        port=port,
        reuse_port=reuse_port or None,
        loop=uvloop.new_event_loop(),
        print=None,
        access_log=None,
        keepalive_timeout=keepalive_s,
        shutdown_timeout=shutdown_timeout,
        handle_signals=True,
        sock=[admin_socket(host, admin_port, reuse_port=reuse_port)] if admin_port else None,
    )


def admin_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening socket for the operator endpoints (shared by replicas with SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock
