"""Typed settings read once from ``SCOREBOARD_*`` environment variables.

Every service subclasses :class:`CommonSettings` with its own fields; the object is frozen, so a
value read at start cannot silently change while the service runs.
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    """What every service needs: where the infrastructure is and how to log."""

    model_config = SettingsConfigDict(env_prefix="SCOREBOARD_", frozen=True, extra="ignore")

    service_name: str = "scoreboard"
    host: str = "127.0.0.1"
    port: int = 8080
    # SO_REUSEPORT: several processes of a stateless service (the gateway) listen on one port
    # and the kernel spreads connections across them, like replicas on one host.
    reuse_port: bool = False
    # Operator endpoints (/metrics, /readyz with each check's state) listen here, on the same
    # host; the service port then answers /readyz with the status alone and /metrics not at all.
    # 0 serves everything on the service port (the tests' in-process apps).
    admin_port: int = Field(default=0, ge=0, le=65535)
    # The HTTP edge's bounds against slow clients (slowloris): a connection idle, or still
    # sending its request's headers, this long after it opened or after its last response is
    # closed (aiohttp's keep-alive timeout, which also runs while headers arrive); a request
    # body that has not fully arrived this long after its headers gets 408 (common.bodies).
    http_keepalive_s: float = Field(default=75.0, gt=0)
    http_body_timeout_s: float = Field(default=10.0, gt=0)
    log_level: str = "INFO"
    log_json: bool = True

    postgres_dsn: str = "postgresql://scoreboard:scoreboard@127.0.0.1:5432/scoreboard"
    postgres_pool_min: int = 1
    postgres_pool_max: int = 10

    # One server (redis://, rediss://), or a Redis Cluster: redis+cluster://[user:pw@]host:port
    # with one or more nodes comma-separated (rediss+cluster:// with TLS). Only the broadcaster
    # takes a cluster, here or for its boards alone (SCOREBOARD_BOARD_REDIS_URL); the gateway
    # and auth refuse one (common.redis_client; docs/architecture.md "Redis Cluster layout").
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Every Redis key starts with this, so test runs and tenants never see each other's data.
    # No braces: the keys' Redis Cluster hash tags come after it (common.keyspace).
    redis_prefix: str = Field(default="sb:", pattern=r"^[^{}]*$")
    # Connections per process; a command waits up to the timeout for a free one.
    redis_max_connections: int = 64
    redis_pool_timeout_s: float = 2.0

    kafka_bootstrap: str = "127.0.0.1:9094"
    # Prepended to every topic name (tests use a random one per run).
    topic_prefix: str = ""
    # How `scoreboard-topics` creates the topics: 1/1 for the local single broker; production
    # clusters want 3 and 2 (with acks=all, a write then survives the loss of one broker).
    kafka_replication_factor: int = 1
    kafka_min_insync_replicas: int = 1
    # Who this process is to Kafka (common.kafka.KafkaAuth): SASL/SCRAM, one user per service,
    # each with only its ACLs (common.kafka_access). An empty username is the service's name; an
    # empty password the local broker's development one (scripts/infra.py). PLAINTEXT only for
    # a broker without authentication (the tests' Docker one).
    kafka_security_protocol: Literal["SASL_PLAINTEXT", "SASL_SSL", "PLAINTEXT"] = "SASL_PLAINTEXT"
    kafka_sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256"] = "SCRAM-SHA-512"
    kafka_username: str = ""
    kafka_password: SecretStr = SecretStr("")
    kafka_ssl_cafile: str = ""  # SASL_SSL: the CA that signed the brokers' certificates

    # Access tokens: issued by auth, verified by the gateway against auth's JWKS.
    jwt_issuer: str = "scoreboard-auth"
    jwt_audience: str = "scoreboard"

    # Deprecated alias of the standard OTEL_EXPORTER_OTLP_ENDPOINT (an OTLP/HTTP collector's base
    # URL), read only when that is unset; the OTEL_* variables configure tracing (common.tracing).
    otel_exporter_endpoint: str = ""

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the environment once; ``overrides`` win (tests use them)."""
        return cls(**overrides)
