"""The action catalog: which actions exist and what each is worth. Points come from here only."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from pydantic import BaseModel, ConfigDict, Field

from common.problems import BadRequest
from common.rejections import Rejection

ACTION_TYPE: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class ActionSpec(BaseModel):
    """One catalog entry: the points it is worth, the least time it takes, its earning rules.

    ``max_open`` tickets of the type may be open per user (one more replaces the oldest);
    ``per_hour`` / ``per_day`` cap its completions per user and UTC period (gateway.earning).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # The same bound as ScoreCommand.points, so a catalog entry always yields a valid command.
    points: int = Field(gt=0, le=1_000_000)
    min_duration_ms: int = Field(default=0, ge=0, le=24 * 3600 * 1000)
    max_open: int = Field(default=1, ge=1, le=10_000)
    per_hour: int | None = Field(default=None, ge=1)
    per_day: int | None = Field(default=None, ge=1)


DEFAULT_CATALOG: Final[Mapping[str, ActionSpec]] = {
    "quest": ActionSpec(points=50, min_duration_ms=2000),
    "puzzle": ActionSpec(points=20, min_duration_ms=1000),
    "daily_login": ActionSpec(points=10, min_duration_ms=0, per_day=1),
    "tap": ActionSpec(points=1, min_duration_ms=100),
}


class UnknownActionType(BadRequest, Rejection):
    """400: the action type is not in the catalog."""

    reason = "unknown_action_type"


class Catalog:
    """Read-only view of the configured catalog."""

    def __init__(self, entries: Mapping[str, ActionSpec]) -> None:
        self._entries = dict(entries)

    def find(self, action_type: str) -> ActionSpec | None:
        """The entry for ``action_type``, or None."""
        return self._entries.get(action_type)

    @property
    def types(self) -> tuple[str, ...]:
        """Every action type, sorted."""
        return tuple(sorted(self._entries))

    def get(self, action_type: str) -> ActionSpec:
        """The entry for ``action_type``, or :class:`UnknownActionType`."""
        spec = self._entries.get(action_type)
        if spec is None:
            raise self.unknown(action_type)
        return spec

    def unknown(self, action_type: str) -> UnknownActionType:
        """The 400 for an action type the catalog does not have."""
        known = ", ".join(self.types)
        return UnknownActionType(f"unknown action_type {action_type!r}; known: {known}")

    def listing(self) -> list[dict[str, object]]:
        """The public list, sorted by name: ``action_type``, ``points``, ``min_duration_ms``,
        ``max_open`` and the period caps that are set (``per_hour``, ``per_day``)."""
        return [
            {
                "action_type": name,
                **spec.model_dump(exclude_none=True),
            }
            for name, spec in sorted(self._entries.items())
        ]
