"""The gateway service's settings (``SCOREBOARD_*`` variables; see the README's table)."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from common.catalog import CatalogSettings
from common.command_signing import CommandKey, CommandKeySettings
from common.settings import CommonSettings

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# A development-only key so `make up` works out of the box; the gateway logs a warning when it
# is in use. Production sets SCOREBOARD_ACTION_HMAC_KEYS from a Secret.
DEV_HMAC_KEY = "dev:insecure-development-key-change-me"

_KEY_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class HmacKey(BaseModel):
    """One action-hash key: ``key_id`` travels in the hash (``<key_id>.<hex>``)."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    secret: SecretStr


def _split_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string (friendlier in env files and Secrets)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class Settings(CommonSettings, CatalogSettings, CommandKeySettings):
    """Frozen, read once at start."""

    service_name: str = "gateway"
    port: int = 8080
    admin_port: int = 9080  # /metrics and detailed /readyz (common.health)

    # Internal upstreams (the gateway is the only public origin).
    auth_url: str = "http://127.0.0.1:8081"
    broadcaster_url: str = "http://127.0.0.1:8083"
    upstream_timeout_s: float = Field(default=10.0, gt=0)
    # The web page (index.html, app.js, style.css); overridable so tests can serve a fixture dir.
    static_dir: Path = Path(__file__).resolve().parent / "static"

    # Access-token verification against auth's JWKS.
    jwks_min_refresh_s: float = Field(default=10.0, ge=0)
    # Must stay shorter than auth's key_publish_ahead_s (120 s): then every gateway knows a new
    # key before auth signs with it, and a rotation never depends on the rate-limited
    # unknown-kid refresh (tests/e2e/test_key_rotation.py showed 401s when it did).
    jwks_refresh_interval_s: float = Field(default=60.0, gt=0)
    jwt_leeway_s: float = Field(default=30.0, ge=0)
    # The contract caps access tokens at 15 minutes; a longer-lived token is refused outright.
    jwt_max_lifetime_s: int = Field(default=900, gt=0)
    token_cache_size: int = Field(default=10_000, ge=0)

    # GCRA limits: sustained rate per second and burst (requests allowed at once).
    update_rate_per_user: float = Field(default=10.0, gt=0)
    update_burst_per_user: int = Field(default=20, ge=1)
    update_rate_per_address: float = Field(default=50.0, gt=0)
    update_burst_per_address: int = Field(default=100, ge=1)
    actions_rate_per_address: float = Field(default=50.0, gt=0)
    actions_burst_per_address: int = Field(default=100, ge=1)
    # A coarse flood guard only: auth itself throttles failed logins per name and per address.
    auth_rate_per_address: float = Field(default=20.0, gt=0)
    auth_burst_per_address: int = Field(default=100, ge=1)
    # Peers whose X-Forwarded-For last hop is believed (an ingress, a load balancer).
    trusted_proxies: Annotated[list[IpNetwork], NoDecode] = Field(default_factory=list)

    # Actions: the catalog (action_catalog, JSON object, common.catalog) and the ticket keys
    # ("kid:secret", first one signs).
    action_hmac_keys: Annotated[list[HmacKey], NoDecode] = Field(
        default_factory=lambda: [_parse_key(DEV_HMAC_KEY)]
    )
    ticket_ttl_s: int = Field(default=600, gt=0)
    # Points per minute one player may earn from the types without a period cap, all together
    # (gateway.earning); unset: the catalog's best type done back to back.
    points_budget_per_minute: int | None = Field(default=None, gt=0)
    # How long a completed action id is remembered (duplicates within it get 409).
    done_ttl_s: int = Field(default=7 * 24 * 3600, gt=0)
    publish_timeout_s: float = Field(default=5.0, gt=0)
    # Commands are signed with this key of command_keys (common.command_signing); empty: the
    # first one. Rotation: operations.md, "Rotate the command signing key".
    command_signing_kid: str = ""
    # A retry that finds its action claimed and not yet published waits this long after the
    # claim, then takes it over and publishes itself (the claiming gateway died before Kafka
    # acknowledged). Must exceed publish_timeout_s: until then the claim may still succeed.
    claim_stale_after_s: float = Field(default=6.0, gt=0)
    # Fault injection for the crash tests: "after_claim" kills the process (SIGKILL) between
    # claiming an action and publishing it. Never set it in production.
    crash_point: Literal["", "after_claim"] = ""
    # Prefer: wait subscribes to the "applied" channel while requests wait, and this long after.
    applied_linger_s: float = Field(default=30.0, ge=0)

    # WebSocket proxy.
    ws_heartbeat_s: float = Field(default=20.0, gt=0)
    ws_send_timeout_s: float = Field(default=10.0, gt=0)
    ws_max_client_message: int = Field(default=1024, gt=0)
    # WebSocket admission, before the upgrade (gateway.ws_admission): connections open at once
    # per address bucket (IPv4 address, IPv6 /64) and per gateway process, and new connections
    # per second per bucket (GCRA, shared by every replica).
    # Board reads (top, a player, me) per address bucket, across replicas.
    reads_rate_per_address: float = Field(default=50.0, gt=0)
    reads_burst_per_address: int = Field(default=200, ge=1)
    # Public board reads are answered from a per-process cache this long (gateway.board_cache);
    # 0 sends every read to the broadcaster.
    board_cache_ttl_s: float = Field(default=0.1, ge=0, le=10)
    ws_max_per_address: int = Field(default=50, ge=1)
    ws_max_connections: int = Field(default=20_000, ge=1)
    ws_connect_rate_per_address: float = Field(default=5.0, gt=0)
    ws_connect_burst_per_address: int = Field(default=20, ge=1)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_networks(cls, value: Any) -> Any:
        items = _split_list(value)
        if isinstance(items, list):
            return [ipaddress.ip_network(str(v), strict=False) for v in items]
        return items

    @field_validator("action_hmac_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: Any) -> Any:
        items = _split_list(value)
        if isinstance(items, list):
            keys = [_parse_key(v) if isinstance(v, str) else v for v in items]
            if not keys:
                raise ValueError("at least one key is required")
            ids = [k.key_id if isinstance(k, HmacKey) else k.get("key_id") for k in keys]
            if len(set(ids)) != len(ids):
                raise ValueError("key ids must be unique")
            return keys
        return items

    @model_validator(mode="after")
    def _check_claim_timing(self) -> Settings:
        if self.claim_stale_after_s <= self.publish_timeout_s:
            raise ValueError(
                "claim_stale_after_s must exceed publish_timeout_s: a claim still being "
                "published must not be taken over"
            )
        return self

    @model_validator(mode="after")
    def _check_signing_kid(self) -> Settings:
        if self.command_signing_kid and self.command_signing_kid not in {
            k.key_id for k in self.command_keys
        }:
            raise ValueError(
                f"command_signing_kid {self.command_signing_kid!r} is not in command_keys"
            )
        return self

    @property
    def command_signing_key(self) -> CommandKey:
        """The key commands are signed with."""
        wanted = self.command_signing_kid or self.command_keys[0].key_id
        return next(k for k in self.command_keys if k.key_id == wanted)

    @property
    def uses_dev_hmac_key(self) -> bool:
        """True when the built-in development key is configured (never in production)."""
        dev_secret = DEV_HMAC_KEY.partition(":")[2]
        return any(k.secret.get_secret_value() == dev_secret for k in self.action_hmac_keys)


def _parse_key(text: str) -> HmacKey:
    key_id, sep, secret = text.partition(":")
    if not sep or not _KEY_ID.fullmatch(key_id):
        raise ValueError("an action HMAC key is '<key id>:<secret>', key id [A-Za-z0-9_-]{1,32}")
    if len(secret) < 16:
        raise ValueError(f"action HMAC key {key_id!r}: the secret needs at least 16 characters")
    return HmacKey(key_id=key_id, secret=SecretStr(secret))
