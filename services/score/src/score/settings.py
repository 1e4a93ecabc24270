"""The score service's settings (``SCOREBOARD_*`` variables; see services/score/README.md)."""

from __future__ import annotations

from pydantic import Field

from common.catalog import CatalogSettings
from common.command_signing import CommandKeySettings
from common.settings import CommonSettings


class Settings(CommonSettings, CatalogSettings, CommandKeySettings):
    """Frozen, read once at start.

    ``command_keys`` are the keys a command may be signed with (every one the gateways may be
    using during a rotation), ``action_catalog`` the gateway's catalog: a command is applied only
    if it verifies and its points are the catalog's (score.commands).
    """

    service_name: str = "score"
    port: int = 8082
    admin_port: int = 9082  # /metrics and detailed /readyz (common.health)
    # The pool serves one apply transaction at a time plus health checks; the relay has its own
    # connection. Connecting lazily (min 0) keeps idle replicas from holding connections.
    postgres_pool_min: int = 0
    postgres_pool_max: int = 4
    # Its own role: no DDL (the owner migrates; common.db_access has its grants).
    postgres_dsn: str = (
        "postgresql://scoreboard_score:score-local-dev-password@127.0.0.1:5432/scoreboard"
    )

    # Consumer group on the commands topic; every replica uses the same one.
    group_id: str = "score"
    # A batch is what getmany() returns, topped up for at most batch_wait_ms, up to batch_max.
    batch_max: int = 2000
    batch_wait_ms: int = 20
    # At most this many board periods (a command counts in every window of every board it
    # feeds) per transaction: a batch past it applies in consecutive runs (ScoreStore.apply).
    board_rows_per_transaction: int = Field(default=20_000, ge=1)
    # How long one poll waits when nothing arrives (bounds how quickly a stop is noticed).
    poll_idle_ms: int = 500
    # Transient failures (database or Kafka) are retried with exponential backoff and jitter.
    retry_base_s: float = 0.1
    retry_cap_s: float = 5.0
    # How long a rebalance waits for the in-flight batch to finish and commit before giving up
    # its partitions anyway (the batch then does not commit; the new owner dedupes it).
    revoke_wait_s: float = 10.0
    # An offset commit that takes longer is given up (the next commit covers its offsets).
    commit_timeout_s: float = 10.0
    # How long SIGTERM waits for the in-flight batch and the relay before cancelling them.
    shutdown_grace_s: float = 8.0

    # Outbox relay: rows per publish round, poll interval when no NOTIFY arrives, retention of
    # sent rows, and how often a standby replica tries to take over the relay lock.
    relay_batch: int = 500
    relay_poll_ms: int = 500
    outbox_retention_s: float = 3600.0
    outbox_purge_interval_s: float = 60.0
    relay_standby_poll_s: float = 2.0
    # How long the relay waits for an abort, or for a new leader's read of the topic's committed
    # tail, before it gives up and steps down (the next leader's init_transactions aborts then).
    relay_kafka_timeout_s: float = 15.0

    # Anomaly flags (score/flags.py; the model in score/anomaly.py, explained in
    # docs/architecture.md). Rates are points per second. A player is flagged when their rate's
    # robust z-score against the active players exceeds flags_z_threshold and the rate exceeds
    # flags_rate_floor, for flags_sustain evaluations in a row. The rate floor sits above what the
    # earning rules let one honest player reach (25 points/s sustained, about 42 at the peak of a
    # burst), the MAD floor keeps a quiet population from flagging its one active player.
    flags_enabled: bool = True
    flags_tau_s: float = Field(default=5.0, gt=0)
    flags_z_threshold: float = Field(default=5.0, gt=0)
    flags_sustain: int = Field(default=2, ge=1)
    flags_eval_interval_s: float = Field(default=1.0, gt=0)
    flags_mad_floor: float = Field(default=2.0, gt=0)
    flags_rate_floor: float = Field(default=50.0, ge=0)
    # The population: players with a change in this window. Also how far back a replica reads
    # when it is given partitions, to know their players' rates at once.
    flags_active_window_s: float = Field(default=30.0, gt=0)
    flags_min_active: int = Field(default=5, ge=1)
    # Shadow quarantine: a flag raised with this on records the player's score (player_flags.
    # held_score), and the public board shows them at most that until the flag is cleared; the
    # player's own standing keeps the real score (docs/architecture.md, "Anomaly flags").
    flags_quarantine: bool = False

    # Closing board periods (score/closer.py): a period closes once its end plus the grace has
    # passed and every command produced before then is applied; its final standings go out on
    # scoreboard.period-closed.v1. The grace covers a command accepted just before the end and
    # published late (the gateway's 5 s publish timeout, a stale claim's takeover after 6 s).
    period_close_enabled: bool = True
    period_close_grace_s: float = Field(default=30.0, ge=0)
    period_close_interval_s: float = Field(default=10.0, gt=0)
    # How often the relay's leader announces new bans, unbans and deletions on
    # scoreboard.user-removals.v1 (score/moderation.py).
    moderation_poll_s: float = Field(default=1.0, gt=0)
