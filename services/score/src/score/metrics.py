"""The score service's Prometheus metrics, registered on the app's own registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


@dataclass(frozen=True)
class ScoreMetrics:
    """Everything the consumer and the relay report."""

    applied: Counter
    duplicates: Counter
    dead_lettered: Counter
    batch_size: Histogram
    apply_seconds: Histogram
    command_age: Histogram
    failures: Counter
    consumer_lag: Gauge
    outbox_backlog: Gauge
    relay_published: Counter
    relay_recovered: Counter
    relay_fenced: Counter
    relay_leader: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry) -> ScoreMetrics:
        """Register the metrics on ``registry``."""
        return cls(
            applied=Counter(
                "scoreboard_score_commands_applied",
                "Score commands applied (each changed a score once)",
                registry=registry,
            ),
            duplicates=Counter(
                "scoreboard_score_commands_duplicate",
                "Score commands skipped because their action was already applied",
                registry=registry,
            ),
            dead_lettered=Counter(
                "scoreboard_score_commands_dead_lettered",
                "Score commands sent to the dead-letter topic, by reason",
                ["reason"],
                registry=registry,
            ),
            batch_size=Histogram(
                "scoreboard_score_batch_size",
                "Records per consumed batch",
                buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
                registry=registry,
            ),
            apply_seconds=Histogram(
                "scoreboard_score_apply_duration_seconds",
                "Time to apply one batch in PostgreSQL (one transaction)",
                buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                registry=registry,
            ),
            command_age=Histogram(
                "scoreboard_score_command_age_seconds",
                "From the gateway accepting a command (accepted_at) to its transaction's commit; "
                "the part of a player's wait spent before the outbox",
                buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                registry=registry,
            ),
            failures=Counter(
                "scoreboard_score_failures",
                "Transient failures that were retried, by stage",
                ["stage"],
                registry=registry,
            ),
            consumer_lag=Gauge(
                "scoreboard_score_consumer_lag",
                "Commands not yet applied, per partition (high watermark minus position)",
                ["topic", "partition"],
                registry=registry,
            ),
            outbox_backlog=Gauge(
                "scoreboard_score_outbox_backlog",
                "Outbox rows not yet published",
                registry=registry,
            ),
            relay_published=Counter(
                "scoreboard_score_relay_published",
                "ScoreChanged events published by the outbox relay",
                registry=registry,
            ),
            relay_recovered=Counter(
                "scoreboard_score_relay_recovered",
                "Outbox rows a new relay leader found already committed on the topic (published by "
                "an earlier leader that stopped before marking them) and marked sent, not resent",
                registry=registry,
            ),
            relay_fenced=Counter(
                "scoreboard_score_relay_fenced",
                "Times this relay found its transactional producer fenced (a newer leader started, "
                "or its transaction timed out) and stepped down",
                registry=registry,
            ),
            relay_leader=Gauge(
                "scoreboard_score_relay_leader",
                "1 when this replica holds the relay lock and publishes the outbox",
                registry=registry,
            ),
        )


@dataclass(frozen=True)
class FlagMetrics:
    """What the anomaly flagger reports (score/flags.py)."""

    flagged: Counter
    active_players: Gauge
    median_rate: Gauge
    mad_rate: Gauge
    failures: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> FlagMetrics:
        """Register the metrics on ``registry``."""
        return cls(
            flagged=Counter(
                "scoreboard_score_players_flagged",
                "Players flagged for review: earning rate far above the active players'",
                registry=registry,
            ),
            active_players=Gauge(
                "scoreboard_score_flags_active_players",
                "Players compared at the last evaluation (a change within the active window, on "
                "this replica's partitions)",
                registry=registry,
            ),
            median_rate=Gauge(
                "scoreboard_score_flags_median_rate",
                "The active players' median earning rate at the last evaluation, points/s",
                registry=registry,
            ),
            mad_rate=Gauge(
                "scoreboard_score_flags_mad_rate",
                "The active players' median absolute deviation of earning rates, points/s",
                registry=registry,
            ),
            failures=Counter(
                "scoreboard_score_flags_failures",
                "Flagger failures (Kafka or PostgreSQL), by stage; the flagger restarts",
                ["stage"],
                registry=registry,
            ),
        )
