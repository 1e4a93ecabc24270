"""The action catalog's definition: which actions exist and what each is worth.

Points come from here only. The gateway issues and admits actions by it; the score service
re-checks every command's points against it before applying, so a command that names a price
the catalog does not have changes no score, however it reached the topic. Both read the same
setting (``SCOREBOARD_ACTION_CATALOG``, JSON), through :class:`CatalogSettings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class CatalogSettings(BaseModel):
    """The ``action_catalog`` setting, mixed into the settings of every service that reads it.

    Changing a type's points is not atomic across services: a command priced by the old entry
    and checked against the new one is dead-lettered. Hence operations.md's procedure: a new
    price is a new action type, added to the score service first.
    """

    action_catalog: dict[str, ActionSpec] = Field(default_factory=lambda: dict(DEFAULT_CATALOG))

    @field_validator("action_catalog")
    @classmethod
    def _check_action_catalog(cls, value: dict[str, ActionSpec]) -> dict[str, ActionSpec]:
        if not value:
            raise ValueError("the catalog needs at least one action type")
        for name in value:
            if not ACTION_TYPE.fullmatch(name):
                raise ValueError(f"action type {name!r} must match {ACTION_TYPE.pattern}")
        return value
