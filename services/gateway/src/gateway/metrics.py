"""The gateway's Prometheus metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class GatewayMetrics:
    """Counters and histograms the gateway's modules update."""

    rejections: Counter
    tickets_issued: Counter
    commands_accepted: Counter
    publish_seconds: Histogram
    publish_failures: Counter
    wait_outcomes: Counter
    jwks_refreshes: Counter
    upstream_errors: Counter
    ws_connections: Gauge
    board_cache: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> GatewayMetrics:
        """Register every gateway metric on ``registry``."""
        return cls(
            rejections=Counter(
                "scoreboard_gateway_rejections",
                "Requests rejected for a security or abuse reason",
                ["reason"],
                registry=registry,
            ),
            tickets_issued=Counter(
                "scoreboard_gateway_tickets_issued",
                "Action tickets issued",
                ["action_type"],
                registry=registry,
            ),
            commands_accepted=Counter(
                "scoreboard_gateway_commands_accepted",
                "Score commands acknowledged by Kafka (acks=all)",
                ["action_type"],
                registry=registry,
            ),
            publish_seconds=Histogram(
                "scoreboard_gateway_publish_duration_seconds",
                "Time for Kafka to acknowledge a score command",
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
                registry=registry,
            ),
            publish_failures=Counter(
                "scoreboard_gateway_publish_failures",
                "Score commands Kafka did not take (answered 503)",
                ["reason"],
                registry=registry,
            ),
            wait_outcomes=Counter(
                "scoreboard_gateway_wait_outcomes",
                "Prefer: wait requests by outcome (applied in time or not)",
                ["outcome"],
                registry=registry,
            ),
            jwks_refreshes=Counter(
                "scoreboard_gateway_jwks_refreshes",
                "JWKS fetches from the auth service by outcome",
                ["outcome"],
                registry=registry,
            ),
            upstream_errors=Counter(
                "scoreboard_gateway_upstream_errors",
                "Proxied requests that failed to reach the upstream",
                ["upstream"],
                registry=registry,
            ),
            ws_connections=Gauge(
                "scoreboard_gateway_ws_connections",
                "WebSocket connections proxied right now",
                registry=registry,
            ),
            board_cache=Counter(
                "scoreboard_gateway_board_cache",
                "Public board reads by how they were answered: hit (kept answer), shared (joined "
                "a request in flight), miss (asked the broadcaster)",
                ["result"],
                registry=registry,
            ),
        )
