"""Prometheus metrics shared by the services (each app owns a registry: no module globals).

Naming: every family is ``scoreboard_<service>_<what>`` (``scoreboard_gateway_*``,
``scoreboard_broadcaster_*``, ...), except what every service exports alike
(``scoreboard_http_*``), plus the client library's standard ``process_*`` and ``python_*``.
Counters are declared without ``_total``, which the client adds; units are the suffix
(``_seconds``, ``_bytes``).
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)


def runtime_metrics(registry: CollectorRegistry) -> None:
    """The standard process (CPU, memory, file descriptors), GC and interpreter families
    (``process_*``, ``python_gc_*``, ``python_info``) on the app's own registry: without them
    saturation (CPU, memory, descriptors) cannot be seen per replica."""
    for collector in (ProcessCollector, GCCollector, PlatformCollector):
        try:
            collector(registry=registry)
        except ValueError:  # already registered: the registry served an app before
            return


def http_metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram]:
    """Request count and latency, labelled by service, method, route and status."""
    requests = Counter(
        "scoreboard_http_requests",
        "HTTP requests served",
        ["service", "method", "route", "status"],
        registry=registry,
    )
    latency = Histogram(
        "scoreboard_http_request_duration_seconds",
        "HTTP request latency",
        ["service", "method", "route"],
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
        registry=registry,
    )
    return requests, latency
