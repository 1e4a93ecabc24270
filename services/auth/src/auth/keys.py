"""Signing keys: stored in PostgreSQL, rotated without downtime, cached in every replica.

A key's life: created and published in the JWKS at once; signs from ``activates_at``
(``key_publish_ahead_s`` later, by which time every replica has loaded it and every gateway can
have fetched it); leaves the JWKS at ``retires_at``, which rotation sets to the next key's
activation + the access-token lifetime + a margin, i.e. after the last token it signed expired.
Each replica picks its signing key by time from what it loaded, so replicas agree without
talking to each other.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from auth.settings import Settings
from common.problems import ServiceUnavailable

log = structlog.get_logger(__name__)

ALGORITHM = "EdDSA"
# Serialises key creation and rotation across replicas and the CLI.
_KEYS_LOCK_ID = 0x5C0_A07_4E75


class NoSigningKey(ServiceUnavailable):
    """503: no key can sign right now (none loaded yet, or none could be decrypted)."""

    def __init__(self) -> None:
        super().__init__("no signing key is available", headers={"Retry-After": "5"})


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 key pair and its schedule."""

    kid: str
    private_key: Ed25519PrivateKey
    public_key: Ed25519PublicKey
    public_jwk: dict[str, str]
    activates_at: datetime
    retires_at: datetime | None

    def published(self, now: datetime) -> bool:
        """In the JWKS at ``now`` (from creation until retirement)."""
        return self.retires_at is None or self.retires_at > now

    def signs(self, now: datetime) -> bool:
        """May sign at ``now``."""
        return self.activates_at <= now and self.published(now)


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url): a kid derived from the key itself."""
    members = {name: jwk[name] for name in ("crv", "kty", "x")}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def public_jwk(public_key: Ed25519PublicKey) -> dict[str, str]:
    """The JWK of an Ed25519 public key, with kid, use and alg, as the JWKS serves it."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}
    return {**jwk, "kid": thumbprint(jwk), "use": "sig", "alg": ALGORITHM}


def current_signing_key(keys: Sequence[SigningKey], now: datetime) -> SigningKey | None:
    """The key to sign with at ``now``: the most recently activated one that may sign."""
    usable = [k for k in keys if k.signs(now)]
    return max(usable, key=lambda k: k.activates_at) if usable else None


def jwks_document(keys: Sequence[SigningKey], now: datetime) -> dict[str, list[dict[str, str]]]:
    """The JWKS at ``now``: every key not yet retired, newest first (including pending ones)."""
    live = sorted((k for k in keys if k.published(now)), key=lambda k: k.activates_at, reverse=True)
    return {"keys": [dict(k.public_jwk) for k in live]}


def _encryption(passphrase: str) -> serialization.KeySerializationEncryption:
    if passphrase:
        return serialization.BestAvailableEncryption(passphrase.encode())
    return serialization.NoEncryption()


async def _insert_new_key(
    conn: PoolConnectionProxy[asyncpg.Record], passphrase: str, activates_in_s: float
) -> tuple[str, datetime]:
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, _encryption(passphrase)
    ).decode()
    jwk = public_jwk(private.public_key())
    activates_at: datetime = await conn.fetchval(
        """INSERT INTO signing_keys (kid, private_key_pem, public_jwk, activates_at)
           VALUES ($1, $2, $3::jsonb, clock_timestamp() + make_interval(secs => $4))
           RETURNING activates_at""",
        jwk["kid"],
        pem,
        json.dumps(jwk),
        float(activates_in_s),
    )
    return jwk["kid"], activates_at


async def ensure_signing_key(pool: asyncpg.Pool, settings: Settings) -> str | None:
    """Create a key that signs at once if none can sign now; returns its kid if created.

    Replicas starting together race here; the advisory lock lets exactly one of them create it.
    """
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK_ID)
        # clock_timestamp(), not now(): now() is when this transaction began, possibly before
        # the replica that held the lock created its key.
        usable = await conn.fetchval(
            """SELECT count(*) FROM signing_keys
               WHERE activates_at <= clock_timestamp()
                 AND (retires_at IS NULL OR retires_at > clock_timestamp())"""
        )
        if usable:
            return None
        kid, _ = await _insert_new_key(conn, settings.signing_key_passphrase.get_secret_value(), 0)
    log.info("signing_key_created", kid=kid)
    return kid


@dataclass(frozen=True)
class Rotation:
    """What ``rotate_keys`` did."""

    kid: str
    activates_at: datetime
    retiring: list[tuple[str, datetime]]
    deleted: int


async def rotate_keys(pool: asyncpg.Pool, settings: Settings) -> Rotation:
    """Add a key (published now, signing after ``key_publish_ahead_s``) and schedule the
    retirement of every older key for after the last token it can still sign has expired.

    Keys retired in the past are deleted: their private halves are of no use to anyone.
    """
    keep_s = settings.access_ttl_s + settings.key_retire_margin_s
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _KEYS_LOCK_ID)
        deleted = await conn.fetchval(
            """WITH gone AS (DELETE FROM signing_keys WHERE retires_at <= now() RETURNING 1)
               SELECT count(*) FROM gone"""
        )
        kid, activates_at = await _insert_new_key(
            conn, settings.signing_key_passphrase.get_secret_value(), settings.key_publish_ahead_s
        )
        rows = await conn.fetch(
            """UPDATE signing_keys SET retires_at = $1::timestamptz + make_interval(secs => $2)
               WHERE retires_at IS NULL AND kid <> $3
               RETURNING kid, retires_at""",
            activates_at,
            float(keep_s),
            kid,
        )
    rotation = Rotation(kid, activates_at, [(r["kid"], r["retires_at"]) for r in rows], deleted)
    log.info("signing_key_rotated", **describe(rotation))
    return rotation


class KeyStore:
    """This replica's view of the signing keys, reloaded from PostgreSQL."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = float("-inf")
        self._reload_lock = asyncio.Lock()

    @property
    def keys(self) -> list[SigningKey]:
        """Every key loaded (published or pending)."""
        return list(self._keys.values())

    async def start(self) -> None:
        """Load the keys, creating the first one if none can sign."""
        await self.reload()
        if current_signing_key(self.keys, _now()) is None:
            await ensure_signing_key(self._pool, self._settings)
            await self.reload()

    async def reload(self) -> None:
        """Replace the cache with the keys PostgreSQL has now (private keys parsed once)."""
        async with self._reload_lock:
            rows = await self._pool.fetch(
                """SELECT kid, private_key_pem, public_jwk, activates_at, retires_at
                   FROM signing_keys WHERE retires_at IS NULL OR retires_at > now()"""
            )
            fresh: dict[str, SigningKey] = {}
            for row in rows:
                known = self._keys.get(row["kid"])
                if known is not None:
                    fresh[known.kid] = SigningKey(
                        known.kid,
                        known.private_key,
                        known.public_key,
                        known.public_jwk,
                        row["activates_at"],
                        row["retires_at"],
                    )
                    continue
                key = self._parse(row)
                if key is not None:
                    fresh[key.kid] = key
            self._keys = fresh
            self._loaded_at = time.monotonic()

    def _parse(self, row: asyncpg.Record) -> SigningKey | None:
        passphrase = self._settings.signing_key_passphrase.get_secret_value()
        try:
            private = serialization.load_pem_private_key(
                row["private_key_pem"].encode(), passphrase.encode() if passphrase else None
            )
        except (TypeError, ValueError) as exc:
            # A wrong or missing passphrase: the operator must fix the setting; keep serving
            # with the keys that do load rather than minting new ones behind their back.
            log.error("signing_key_unreadable", kid=row["kid"], error=str(exc))
            return None
        if not isinstance(private, Ed25519PrivateKey):
            log.error("signing_key_not_ed25519", kid=row["kid"])
            return None
        jwk: dict[str, str] = json.loads(row["public_jwk"])
        return SigningKey(
            kid=row["kid"],
            private_key=private,
            public_key=private.public_key(),
            public_jwk=jwk,
            activates_at=row["activates_at"],
            retires_at=row["retires_at"],
        )

    def signing_key(self) -> SigningKey:
        """The key to sign with now; :class:`NoSigningKey` if there is none."""
        key = current_signing_key(self.keys, _now())
        if key is None:
            raise NoSigningKey()
        return key

    def jwks(self) -> dict[str, list[dict[str, str]]]:
        """The JWKS document as of now."""
        return jwks_document(self.keys, _now())

    async def verification_key(self, kid: str) -> Ed25519PublicKey | None:
        """The published public key ``kid``; an unknown kid triggers a (rate-limited) reload."""
        key = self._keys.get(kid)
        since = time.monotonic() - self._loaded_at
        if key is None and since >= self._settings.key_unknown_kid_reload_s:
            await self.reload()
            key = self._keys.get(kid)
        if key is None or not key.published(_now()):
            return None
        return key.public_key

    async def run_reloader(self) -> None:
        """Reload every ``key_reload_s`` until cancelled; make a key if none can sign."""
        while True:
            await asyncio.sleep(self._settings.key_reload_s)
            try:
                await self.reload()
                if current_signing_key(self.keys, _now()) is None:
                    await ensure_signing_key(self._pool, self._settings)
                    await self.reload()
            except Exception:
                # PostgreSQL away (or worse): keep signing with the keys we have and try again
                # next round; readiness reports PostgreSQL.
                log.exception("signing_key_reload_failed")


def _now() -> datetime:
    return datetime.now(UTC)


def describe(rotation: Rotation) -> dict[str, Any]:
    """A JSON-friendly summary of a rotation (for the CLI)."""
    return {
        "kid": rotation.kid,
        "activates_at": rotation.activates_at.isoformat(),
        "retiring": [{"kid": k, "retires_at": t.isoformat()} for k, t in rotation.retiring],
        "deleted_retired_keys": rotation.deleted,
    }
