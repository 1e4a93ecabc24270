"""Turning a consumed Kafka record into a score command, or into a poison message with a reason.

A record is a command only if it is signed by a gateway (common.command_signing: the MAC covers
its exact key and value bytes, checked before the value is even parsed), is a schema-valid
``scoreboard.score.command.v1`` CloudEvent, and claims the catalog's points for its action type.
Anything else is poison: it goes to the DLQ with the reason and changes no score.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from pydantic import ValidationError

from common.command_signing import CommandVerifier, SignatureRejected
from common.events import COMMAND_TYPE, ScoreCommand, ScoreCommandEvent
from score.settings import Settings

# W3C trace context headers travel from the command to the ScoreChanged it causes.
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})
# W3C bounds tracestate at 512 characters; traceparent is 55.
_MAX_TRACE_HEADER = 512


class PoisonReason(StrEnum):
    """Why a record cannot be applied; the value is the DLQ's ``x-error`` header."""

    # Not from a gateway (common.command_signing.SignatureFailure): never replay these.
    UNSIGNED = "unsigned"
    UNKNOWN_KEY = "unknown-key"
    BAD_SIGNATURE = "bad-signature"
    INVALID_JSON = "invalid-json"
    WRONG_TYPE = "wrong-type"
    INVALID_SCHEMA = "invalid-schema"
    # Signed, well-formed, but not what the catalog allows (a gateway/score catalog mismatch).
    UNKNOWN_ACTION_TYPE = "unknown-action-type"
    CATALOG_MISMATCH = "catalog-mismatch"
    UNKNOWN_USER = "unknown-user"


@dataclass(frozen=True, slots=True)
class Delivery:
    """One consumed record, as it came off the topic (what the DLQ must reproduce unchanged)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()

    def trace_headers(self) -> dict[str, str]:
        """The record's trace context headers, decoded; those that are not short printable
        ASCII, as W3C trace context is, are dropped.

        Headers are not signed, and these travel on into the outbox (PostgreSQL jsonb, which
        refuses NUL): a replayed command with a NUL in its traceparent once wedged its partition.
        """
        return {
            k: v.decode("ascii")
            for k, v in self.headers
            if k in TRACE_HEADERS
            and v is not None
            and len(v) <= _MAX_TRACE_HEADER
            and v.isascii()
            and v.decode("ascii").isprintable()
        }


@dataclass(frozen=True, slots=True)
class Command:
    """A well-formed score command and the record it came from."""

    delivery: Delivery
    data: ScoreCommand


@dataclass(frozen=True, slots=True)
class Poison:
    """A record that will never apply: it goes to the dead-letter topic."""

    delivery: Delivery
    reason: PoisonReason
    detail: str


@dataclass(frozen=True, slots=True)
class Admission:
    """What a command must satisfy besides its schema: a gateway's signature, catalog points."""

    verifier: CommandVerifier
    points: Mapping[str, int]  # action type -> the catalog's points

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The keys and the catalog the service is configured with."""
        return cls(
            CommandVerifier(settings.command_keys),
            {name: spec.points for name, spec in settings.action_catalog.items()},
        )


def decode(delivery: Delivery, admission: Admission) -> Command | Poison:
    """Verify a record's signature, parse it as a ``scoreboard.score.command.v1`` CloudEvent,
    and check its points against the catalog."""
    signed = admission.verifier.check(delivery.key, delivery.value, delivery.headers)
    if isinstance(signed, SignatureRejected):
        return Poison(delivery, PoisonReason(signed.reason.value), signed.detail)
    raw = delivery.value
    if raw is None:
        return Poison(delivery, PoisonReason.INVALID_JSON, "record has no value")
    try:
        event = ScoreCommandEvent.model_validate_json(raw)
    except ValidationError as exc:
        return Poison(delivery, *_classify(raw, exc))
    data = event.data
    price = admission.points.get(data.action_type)
    if price is None:
        detail = f"action type {data.action_type!r} is not in the catalog"
        return Poison(delivery, PoisonReason.UNKNOWN_ACTION_TYPE, detail)
    if data.points != price:
        detail = f"{data.points} points for {data.action_type!r}; the catalog says {price}"
        return Poison(delivery, PoisonReason.CATALOG_MISMATCH, detail)
    return Command(delivery, data)


def _classify(raw: bytes, exc: ValidationError) -> tuple[PoisonReason, str]:
    # Only the failure path pays for a second look at the payload.
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if any(e["type"] in {"json_invalid", "json_type"} for e in errors):
        return PoisonReason.INVALID_JSON, errors[0]["msg"]
    try:
        envelope = json.loads(raw)
    except ValueError as decode_error:  # UnicodeDecodeError is a ValueError too
        return PoisonReason.INVALID_JSON, str(decode_error)
    kind = envelope.get("type", COMMAND_TYPE) if isinstance(envelope, dict) else COMMAND_TYPE
    if kind != COMMAND_TYPE:
        return PoisonReason.WRONG_TYPE, f"CloudEvent type is {kind!r}, expected {COMMAND_TYPE!r}"
    summary = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(event)'}: {e['msg']}" for e in errors[:5]
    )
    return PoisonReason.INVALID_SCHEMA, summary
