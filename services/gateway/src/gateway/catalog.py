"""The gateway's view of the action catalog (common.catalog): lookups, the 400 for unknown types."""

from __future__ import annotations

from collections.abc import Mapping

from common.catalog import ACTION_TYPE, DEFAULT_CATALOG, ActionSpec
from common.problems import BadRequest
from common.rejections import Rejection

# The definition lives in common.catalog (the score service checks points against it too);
# the gateway's modules import it from here, next to the view they use.
__all__ = ["ACTION_TYPE", "DEFAULT_CATALOG", "ActionSpec", "Catalog", "UnknownActionType"]


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
