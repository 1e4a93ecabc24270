"""The broadcaster's settings (``SCOREBOARD_*`` variables; see the service's README.md)."""

from __future__ import annotations

import socket
from typing import Literal

from pydantic import Field

from broadcaster.pacing import Pacing
from common.settings import CommonSettings


class Settings(CommonSettings):
    """Frozen, read once at start."""

    service_name: str = "broadcaster"
    port: int = 8083
    # Its own role, which may only read (common.db_access has its grants).
    postgres_dsn: str = (
        "postgresql://scoreboard_broadcaster:broadcaster-local-dev-password"
        "@127.0.0.1:5432/scoreboard"
    )
    admin_port: int = 9083  # /metrics and detailed /readyz (common.health)
    # Connecting lazily (min 0) lets the replica start and serve from Redis while PostgreSQL is
    # down; PostgreSQL serves rebuilds and fallback reads only.
    postgres_pool_min: int = 0
    postgres_pool_max: int = 4

    # Kafka: every replica has a consumer group of its own, f"{group_id_prefix}-{replica_id}"
    # (see broadcaster.consumer). A StatefulSet gives stable hostnames, hence stable groups.
    group_id_prefix: str = "broadcaster"
    replica_id: str = Field(default_factory=socket.gethostname, min_length=1)
    # Where a brand-new group starts. "latest" is safe because a new group also merges the board
    # from PostgreSQL after its positions are fixed, which covers everything before them.
    consumer_offset_reset: Literal["latest", "earliest"] = "latest"
    consumer_batch_max: int = Field(default=500, ge=1)
    consumer_poll_ms: int = Field(default=500, ge=10)
    # Offsets are committed at most this often (0: after every batch); a crash replays as much.
    commit_interval_s: float = Field(default=1.0, ge=0)
    # Events per Lua call: bounds how long one call holds Redis.
    apply_chunk: int = Field(default=200, ge=1, le=2000)
    retry_base_s: float = Field(default=0.1, gt=0)
    retry_cap_s: float = Field(default=5.0, gt=0)

    # Rebuilding the board from PostgreSQL.
    rebuild_batch: int = Field(default=1000, ge=1, le=10_000)
    rebuild_lock_ttl_s: float = Field(default=30.0, gt=0)
    # How long a replica waits for another one's rebuild before trying to take the lock itself.
    rebuild_wait_s: float = Field(default=120.0, gt=0)
    # How long a PostgreSQL answer serves reads while Redis is unavailable (protects PostgreSQL).
    fallback_cache_s: float = Field(default=1.0, ge=0)
    # "No such player" answers are remembered this long (up to unknown_cache_size ids), so
    # guessing ids costs one PostgreSQL query per id, not one per request.
    unknown_cache_s: float = Field(default=10.0, ge=0)
    unknown_cache_size: int = Field(default=10_000, ge=0)
    # Deleted users leave the board on PostgreSQL's notification, or at the latest this often.
    removals_poll_s: float = Field(default=5.0, gt=0)
    # Holds and releases of flagged players' board entries (shadow quarantine) are read this often.
    holds_poll_s: float = Field(default=1.0, gt=0)
    # After a Redis failure, reads go straight to PostgreSQL for this long (no 2 s connect waits).
    redis_retry_after_s: float = Field(default=1.0, ge=0)
    # Where the boards live, when not with the rest on SCOREBOARD_REDIS_URL (which keeps the
    # actions' done markers and tickets and the applied channel, shared with the gateway): one
    # server, or a Redis Cluster (redis+cluster://node:port[,node:port], common.redis_client;
    # docs/architecture.md "Redis Cluster layout"). Empty: SCOREBOARD_REDIS_URL.
    board_redis_url: str = ""

    # WebSocket fan-out.
    top_size: int = Field(default=10, ge=1, le=100)
    tick_hz: float = Field(default=10.0, gt=0, le=100)
    max_connections: int = Field(default=20_000, ge=1)
    ws_heartbeat_s: float = Field(default=20.0, gt=0)
    ws_max_message_bytes: int = Field(default=1024, ge=64)
    # Inbound messages: clients need not send anything; a token bucket catches floods (1008).
    ws_inbound_rate: float = Field(default=2.0, gt=0)
    ws_inbound_burst: int = Field(default=10, ge=1)
    # A connection whose unsent bytes exceed this skips frames (it gets the newest state later).
    ws_slow_buffer_bytes: int = Field(default=32 * 1024, ge=0)
    # ...and is closed with 4008 ("too slow") when it stays above it this long.
    ws_stuck_timeout_s: float = Field(default=10.0, gt=0)
    # After a close frame, how long a client has to take it before the socket is aborted.
    ws_close_grace_s: float = Field(default=2.0, gt=0)
    # SO_SNDBUF of WebSocket sockets (0 = kernel autotuning). A bounded kernel buffer makes a
    # client that stops reading visible in the transport buffer within seconds, not minutes.
    ws_socket_sndbuf: int = Field(default=64 * 1024, ge=0)
    # Connected players whose own rank is looked up per board change (round-robin beyond it).
    me_lookups_per_tick: int = Field(default=2000, ge=1)

    @property
    def tick_interval_s(self) -> float:
        """Seconds between ticks: the average spacing of top frames (and rank rounds) per client."""
        return 1.0 / self.tick_hz

    @property
    def pacing(self) -> Pacing:
        """The frame rate promised per client: at most ``tick_hz`` in any second."""
        return Pacing(self.tick_hz)
