"""Request bodies and headers the gateway accepts (unknown fields are rejected with 400)."""

from __future__ import annotations

import uuid
from typing import Annotated, Final

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from common.problems import BadRequest

MAX_WAIT_S: Final = 10

ActionTypeField = Annotated[str, Field(min_length=1, max_length=64)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TicketRequest(_Body):
    """``POST /api/actions``: start an action."""

    action_type: ActionTypeField


class UpdateRequest(_Body):
    """``POST /api/scoreboard/update``: an action was completed."""

    action_id: uuid.UUID
    action_type: ActionTypeField
    action_hash: str = Field(min_length=1, max_length=200)
    # Optional, and only ever checked: the user comes from the token, the points from the catalog.
    user_id: uuid.UUID | None = None
    points: StrictInt | None = None


class InvalidPreference(BadRequest):
    """400: a ``Prefer: wait`` value outside 1..10 seconds."""


def prefer_wait(values: list[str]) -> int | None:
    """The ``wait`` preference (RFC 7240) in whole seconds, or None when absent.

    Other preferences are ignored, as RFC 7240 asks; the first ``wait`` wins.
    """
    for header in values:
        for preference in header.split(","):
            token = preference.split(";", 1)[0].strip()
            name, sep, value = token.partition("=")
            if name.strip().lower() != "wait":
                continue
            text = value.strip().strip('"')
            valid = sep and text.isascii() and text.isdigit() and len(text) <= 3
            if not valid or not 0 < int(text) <= MAX_WAIT_S:
                raise InvalidPreference(
                    f"Prefer: wait must be a whole number of seconds from 1 to {MAX_WAIT_S}"
                )
            return int(text)
    return None
