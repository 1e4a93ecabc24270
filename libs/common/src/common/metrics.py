"""Prometheus metrics shared by the services (each app owns a registry: no module globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram


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
