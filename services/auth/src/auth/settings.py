"""The auth service's settings (``SCOREBOARD_*`` variables; see the README's table)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, SecretStr, model_validator

from common.settings import CommonSettings


class Settings(CommonSettings):
    """Frozen, read once at start."""

    service_name: str = "auth"
    port: int = 8081
    # Its own role: no DDL (the owner migrates; common.db_access has its grants).
    postgres_dsn: str = (
        "postgresql://scoreboard_auth:auth-local-dev-password@127.0.0.1:5432/scoreboard"
    )
    admin_port: int = 9081  # /metrics and detailed /readyz (common.health)

    # Tokens and sessions.
    access_ttl_s: int = Field(
        900, ge=1, le=900, description="Access token lifetime (the contract caps it at 15 min)."
    )
    revocation_margin_s: int = Field(
        60,
        ge=0,
        description="How much longer than a token's lifetime its session's revocation is kept: "
        "more than any gateway's clock-skew leeway (jwt_leeway_s, 30 s), so a revoked token "
        "never verifies again inside the leeway.",
    )
    refresh_ttl_s: int = Field(
        14 * 24 * 3600, ge=60, description="A refresh token's lifetime; each rotation renews it."
    )

    # Signing keys.
    key_publish_ahead_s: float = Field(
        120.0,
        ge=0,
        description="A rotated-in key is in the JWKS this long before it signs anything.",
    )
    key_reload_s: float = Field(
        30.0, gt=0, description="How often each replica re-reads the signing keys."
    )
    key_unknown_kid_reload_s: float = Field(
        5.0,
        ge=0,
        description="A token with an unknown kid reloads the keys at most this often "
        "(forged kids must not become a flood of queries).",
    )
    key_retire_margin_s: float = Field(
        60.0,
        ge=0,
        description="Extra time an old key stays published after its last token expired "
        "(verifiers' leeway and clock skew).",
    )
    signing_key_passphrase: SecretStr = Field(
        SecretStr(""),
        description="If set, private keys are stored encrypted with it in PostgreSQL.",
    )
    jwks_max_age_s: int = Field(60, ge=0, description="Cache-Control max-age of the JWKS.")

    # Login throttling (see login_throttle.py for the design).
    trust_forwarded_for: bool = Field(
        True, description="Take the client address from X-Forwarded-For's last hop (the gateway)."
    )
    login_fail_window_s: float = Field(
        900.0, gt=0, description="Failed logins are counted in windows of this length."
    )
    login_fail_per_name_and_address: int = Field(
        5,
        ge=1,
        description="Failures per username from one address bucket (IPv4 address, IPv6 /64).",
    )
    login_fail_per_name: int = Field(
        100,
        ge=1,
        description="Failures per username from all addresses together (a botnet's backstop).",
    )
    login_fail_per_address: int = Field(
        50, ge=1, description="Failures per address bucket, over all usernames, per window."
    )
    login_delay_base_s: float = Field(
        0.25, ge=0, description="Delay before answering an attempt after the first failure."
    )
    login_delay_max_s: float = Field(
        4.0,
        ge=0,
        description="The slow-down's cap (it doubles per failure); below the gateway's "
        "upstream timeout.",
    )

    # Registration throttling (GCRA in Redis, checked before any hashing; see signup_throttle.py).
    register_rate_per_address: float = Field(
        0.1, gt=0, description="Registrations per second per address bucket, sustained."
    )
    register_burst_per_address: int = Field(
        20, ge=1, description="Registrations one address bucket may make at once."
    )
    register_rate_global: float = Field(
        20.0, gt=0, description="Registrations per second over all addresses and replicas."
    )
    register_burst_global: int = Field(100, ge=1, description="The global registration burst.")

    # Password hashing: argon2id, OWASP's recommended minimum (~30 ms per hash on a 2-core VM).
    argon2_time_cost: int = Field(2, ge=1)
    argon2_memory_kib: int = Field(19 * 1024, ge=8 * 1024)
    argon2_parallelism: int = Field(1, ge=1)
    password_hash_workers: int = Field(
        2, ge=1, description="Threads hashing passwords (each holds argon2_memory_kib)."
    )
    password_hash_max_pending: int = Field(
        64,
        ge=1,
        description="Login hashes queued beyond this get 503 instead of growing latency.",
    )
    password_hash_register_workers: int = Field(
        1,
        ge=1,
        description="Registrations hash on at most this many workers at once; the others are "
        "logins' own (must be below password_hash_workers).",
    )
    password_hash_register_max_pending: int = Field(
        8, ge=1, description="Registrations waiting for a hashing worker beyond this get 503."
    )

    @model_validator(mode="after")
    def _keys_reach_every_replica_before_signing(self) -> Self:
        # Replicas choose the signing key by time from what they loaded; a replica must have
        # loaded a new key before it activates, or two replicas would sign with different keys
        # and the old one could be retired while this replica still signs with it.
        if self.key_publish_ahead_s <= self.key_reload_s:
            raise ValueError("key_publish_ahead_s must be longer than key_reload_s")
        return self

    @model_validator(mode="after")
    def _logins_keep_a_hashing_worker(self) -> Self:
        # Registration must never starve login: at least one worker only ever verifies logins.
        if self.password_hash_register_workers >= self.password_hash_workers:
            raise ValueError("password_hash_register_workers must be below password_hash_workers")
        return self

    @property
    def revocation_ttl_s(self) -> int:
        """How long a session's revocation is kept: the token lifetime plus the margin."""
        return self.access_ttl_s + self.revocation_margin_s
