"""Score commands signed end to end: the gateway signs each record, the score service verifies.

Kafka's own access control says who may write to the commands topic; this says that a command
really came from a gateway and was not changed on the way, whoever could write to the topic (a
mis-granted ACL, a leaked client credential, an operator's console producer). The MAC is
HMAC-SHA256 over the record's key and value exactly as they travel, in a header:

    x-signature: v1;kid=<key id>;<base64url MAC, unpadded>

Keys have ids so they rotate without a stop: the gateway signs with its current key
(``SCOREBOARD_COMMAND_SIGNING_KID``), the score service accepts any key of its set
(``SCOREBOARD_COMMAND_KEYS``, ``kid:base64secret,...``). operations.md has the procedure.
Written on the standard library (``hmac``, ``compare_digest``): there is no Kafka record-signing
library to use, and the construction is a few lines.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, SecretBytes, field_validator
from pydantic_settings import NoDecode

HEADER: Final = "x-signature"
VERSION: Final = "v1"
# Separates this MAC's input from any other use of the same key.
_DOMAIN: Final = b"scoreboard.score-command\x00"
_NULL: Final = struct.pack(">I", 0xFFFFFFFF)  # a null key or value (distinct from empty)
_KEY_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_MIN_SECRET_BYTES: Final = 32
_MAX_HEADER: Final = 200  # a real one is about 60 characters

# A development-only key so `make up` works out of the box; the services log a warning when it
# is in use. Production sets SCOREBOARD_COMMAND_KEYS from a Secret.
DEV_COMMAND_KEY: Final = "dev:" + base64.b64encode(b"insecure-dev-command-key-change!").decode()


class CommandKey(BaseModel):
    """One command-signing key: ``key_id`` travels in the header, the secret never does."""

    model_config = ConfigDict(frozen=True)

    key_id: str
    secret: SecretBytes


def parse_key(text: str) -> CommandKey:
    """``<key id>:<base64 secret>`` (standard or URL-safe alphabet, padding optional)."""
    key_id, sep, encoded = text.strip().partition(":")
    if not sep or not _KEY_ID.fullmatch(key_id):
        raise ValueError("a command key is '<key id>:<base64 secret>', key id [A-Za-z0-9_-]{1,32}")
    encoded = encoded.strip().replace("-", "+").replace("_", "/")
    try:
        secret = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"command key {key_id!r}: the secret is not base64") from None
    if len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(
            f"command key {key_id!r}: the secret needs at least {_MIN_SECRET_BYTES} bytes "
            "(openssl rand -base64 32)"
        )
    return CommandKey(key_id=key_id, secret=SecretBytes(secret))


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class CommandKeySettings(BaseModel):
    """The ``command_keys`` setting, mixed into the gateway's and the score service's settings."""

    command_keys: Annotated[list[CommandKey], NoDecode] = Field(
        default_factory=lambda: [parse_key(DEV_COMMAND_KEY)]
    )

    @field_validator("command_keys", mode="before")
    @classmethod
    def _parse_command_keys(cls, value: Any) -> Any:
        items = _split_list(value)
        if not isinstance(items, list):
            return items
        keys = [parse_key(v) if isinstance(v, str) else v for v in items]
        if not keys:
            raise ValueError("at least one command key is required")
        ids = [k.key_id if isinstance(k, CommandKey) else k.get("key_id") for k in keys]
        if len(set(ids)) != len(ids):
            raise ValueError("command key ids must be unique")
        return keys

    @property
    def uses_dev_command_key(self) -> bool:
        """True when the built-in development key is configured (never in production)."""
        dev = parse_key(DEV_COMMAND_KEY).secret.get_secret_value()
        return any(k.secret.get_secret_value() == dev for k in self.command_keys)


def _field(data: bytes | None) -> bytes:
    return _NULL if data is None else struct.pack(">I", len(data)) + data


def compute_mac(secret: bytes, key: bytes | None, value: bytes | None) -> bytes:
    """HMAC-SHA256 over the record's key and value, each length-prefixed (no ambiguity)."""
    # One-shot (OpenSSL's HMAC in one call), not hmac.new(): the gateway signs every command.
    return hmac.digest(secret, _DOMAIN + _field(key) + _field(value), "sha256")


class CommandSigner:
    """Signs records with one key (the gateway's current one)."""

    def __init__(self, key: CommandKey) -> None:
        self.key_id = key.key_id
        self._secret = key.secret.get_secret_value()

    def header(self, key: bytes | None, value: bytes | None) -> tuple[str, bytes]:
        """The ``x-signature`` header for a record with this key and value."""
        mac = base64.urlsafe_b64encode(compute_mac(self._secret, key, value)).rstrip(b"=")
        return HEADER, f"{VERSION};kid={self.key_id};".encode() + mac


class SignatureFailure(StrEnum):
    """Why a record's signature does not hold; the values are DLQ reasons (``x-error``)."""

    UNSIGNED = "unsigned"  # no x-signature header
    UNKNOWN_KEY = "unknown-key"  # signed with a key id this service does not accept
    BAD_SIGNATURE = "bad-signature"  # malformed, ambiguous, or the MAC does not match


@dataclass(frozen=True, slots=True)
class SignatureRejected:
    """A failed verification: the reason and a line for the DLQ's ``x-error-detail``."""

    reason: SignatureFailure
    detail: str


class CommandVerifier:
    """Verifies records against a set of keys (all that are current during a rotation)."""

    def __init__(self, keys: Iterable[CommandKey]) -> None:
        self._secrets = {k.key_id: k.secret.get_secret_value() for k in keys}

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The accepted key ids."""
        return tuple(self._secrets)

    def check(
        self,
        key: bytes | None,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
    ) -> SignatureRejected | str:
        """The key id that signed the record, or why it is not validly signed."""
        found = [v for k, v in headers if k == HEADER]
        if not found:
            return SignatureRejected(SignatureFailure.UNSIGNED, f"no {HEADER} header")
        if len(found) > 1:
            return _bad(f"{len(found)} {HEADER} headers; exactly one is allowed")
        raw = found[0]
        if raw is None or len(raw) > _MAX_HEADER:
            return _bad(f"malformed {HEADER} header")
        try:
            version, kid_part, mac_text = raw.decode("ascii").split(";")
        except (UnicodeDecodeError, ValueError):
            return _bad(f"malformed {HEADER} header")
        if version != VERSION:
            return _bad(f"unsupported signature version {version!r}")
        if not kid_part.startswith("kid="):
            return _bad(f"malformed {HEADER} header")
        kid = kid_part[4:]
        secret = self._secrets.get(kid)
        if secret is None:
            shown = kid if _KEY_ID.fullmatch(kid) else "(malformed)"
            return SignatureRejected(SignatureFailure.UNKNOWN_KEY, f"key id {shown} not accepted")
        try:
            padded = mac_text + "=" * (-len(mac_text) % 4)
            given = base64.b64decode(padded, altchars=b"-_", validate=True)
        except (binascii.Error, ValueError):
            return _bad("the MAC is not base64url")
        if not hmac.compare_digest(given, compute_mac(secret, key, value)):
            return _bad(f"the MAC does not match the record (key id {kid})")
        return kid


def _bad(detail: str) -> SignatureRejected:
    return SignatureRejected(SignatureFailure.BAD_SIGNATURE, detail)
