"""The broadcaster's Prometheus metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class BroadcasterMetrics:
    """Everything the broadcaster counts (``/metrics``)."""

    cache_hits: Counter
    cache_misses: Counter
    fallbacks: Counter
    events_applied: Counter
    events_stale: Counter
    events_invalid: Counter
    event_lag: Histogram
    rebuilds: Counter
    users_removed: Counter
    ws_clients: Gauge
    ws_feeds: Gauge
    ws_subscriptions: Gauge
    ws_frames: Counter
    ws_slow_skips: Counter
    ws_slow_closes: Counter
    ws_rejected: Counter
    tick_seconds: Histogram

    @classmethod
    def create(cls, registry: CollectorRegistry) -> BroadcasterMetrics:
        """Register the metrics on ``registry``."""
        return cls(
            cache_hits=Counter(
                "scoreboard_broadcaster_cache_hits",
                "Board reads answered by Redis",
                ["query"],
                registry=registry,
            ),
            cache_misses=Counter(
                "scoreboard_broadcaster_cache_misses",
                "Board reads Redis could not answer (down, not built, player not on the board)",
                ["query"],
                registry=registry,
            ),
            fallbacks=Counter(
                "scoreboard_broadcaster_fallbacks",
                "Board reads served from PostgreSQL instead of Redis",
                ["query", "reason"],
                registry=registry,
            ),
            events_applied=Counter(
                "scoreboard_broadcaster_board_events_applied",
                "ScoreChanged events that moved the board",
                registry=registry,
            ),
            events_stale=Counter(
                "scoreboard_broadcaster_board_events_stale",
                "ScoreChanged events ignored: duplicate or older than the board's version",
                registry=registry,
            ),
            events_invalid=Counter(
                "scoreboard_broadcaster_board_events_invalid",
                "Records on the changed topic that are not valid ScoreChanged events (skipped)",
                registry=registry,
            ),
            event_lag=Histogram(
                "scoreboard_broadcaster_board_event_lag_seconds",
                "From a score change (occurred_at) to its application to the Redis board",
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=registry,
            ),
            rebuilds=Counter(
                "scoreboard_broadcaster_board_rebuilds",
                "Board rebuilds from PostgreSQL done by this replica",
                registry=registry,
            ),
            users_removed=Counter(
                "scoreboard_broadcaster_board_users_removed",
                "Deleted users this replica took off the board (the first replica to see a "
                "removal applies it)",
                registry=registry,
            ),
            ws_clients=Gauge(
                "scoreboard_broadcaster_ws_clients",
                "Connected WebSocket clients",
                registry=registry,
            ),
            ws_feeds=Gauge(
                "scoreboard_broadcaster_ws_feeds",
                "(board, window) feeds clients here subscribe to (one top read and serialisation "
                "per change each)",
                registry=registry,
            ),
            ws_subscriptions=Gauge(
                "scoreboard_broadcaster_ws_subscriptions",
                "Board subscriptions of the WebSocket clients here",
                registry=registry,
            ),
            ws_frames=Counter(
                "scoreboard_broadcaster_ws_frames_sent",
                "WebSocket frames written to clients",
                ["type"],
                registry=registry,
            ),
            ws_slow_skips=Counter(
                "scoreboard_broadcaster_ws_slow_skips",
                "Times a client was skipped because its send buffer was full",
                registry=registry,
            ),
            ws_slow_closes=Counter(
                "scoreboard_broadcaster_ws_slow_closes",
                "Clients closed with 4008 after staying unable to receive",
                registry=registry,
            ),
            ws_rejected=Counter(
                "scoreboard_broadcaster_ws_rejected",
                "WebSocket connections refused or closed by policy",
                ["reason"],
                registry=registry,
            ),
            tick_seconds=Histogram(
                "scoreboard_broadcaster_ws_tick_seconds",
                "Duration of one fan-out tick (poll, read, write to every client)",
                buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
                registry=registry,
            ),
        )
