"""Turning a consumed Kafka record into a score command, or into a poison message with a reason."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import ValidationError

from common.events import COMMAND_TYPE, ScoreCommand, ScoreCommandEvent

# W3C trace context headers travel from the command to the ScoreChanged it causes.
TRACE_HEADERS = frozenset({"traceparent", "tracestate"})


class PoisonReason(StrEnum):
    """Why a record cannot be applied; the value is the DLQ's ``x-error`` header."""

    INVALID_JSON = "invalid-json"
    WRONG_TYPE = "wrong-type"
    INVALID_SCHEMA = "invalid-schema"
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
        """The record's trace context headers, decoded."""
        return {
            k: v.decode("latin-1") for k, v in self.headers if k in TRACE_HEADERS and v is not None
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


def decode(delivery: Delivery) -> Command | Poison:
    """Parse a record's value as a ``scoreboard.score.command.v1`` CloudEvent."""
    raw = delivery.value
    if raw is None:
        return Poison(delivery, PoisonReason.INVALID_JSON, "record has no value")
    try:
        event = ScoreCommandEvent.model_validate_json(raw)
    except ValidationError as exc:
        return Poison(delivery, *_classify(raw, exc))
    return Command(delivery, event.data)


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
