"""Timestamps as tickets record them: UTC, millisecond precision, one canonical text form."""

from __future__ import annotations

from datetime import UTC, datetime


def isoformat(moment: datetime) -> str:
    """The canonical text of a timestamp (UTC, milliseconds, ``Z``), as signed and returned."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_ms() -> datetime:
    """The current UTC time truncated to milliseconds (what tickets record)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def epoch_ms(moment: datetime) -> int:
    """Milliseconds since the Unix epoch."""
    return round(moment.timestamp() * 1000)
