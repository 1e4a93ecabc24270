"""The Redis keys of a started action: the gateway claims it, the broadcaster confirms it.

- ``P ticket:{action_id}``: the ticket the gateway issued (JSON), until the action is applied or
  the ticket expires.
- ``P done:{action_id}``: the action was redeemed. ``c:<ms>`` (:data:`CLAIMED`) while the gateway
  that claimed it at that time (Unix ms) publishes the command; :data:`APPLIED` once the
  broadcaster has seen the resulting ScoreChanged (also when the claim was released after a
  publish that timed out yet reached Kafka: the action is done, and a retry is a 409). A claim
  that stays unconfirmed for longer than the gateway's ``claim_stale_after_s`` is taken over by
  a retry of the same completion (its gateway died before Kafka acknowledged, or the
  confirmation has not come yet): the command is published again, which is safe because the
  score service applies an action id at most once.
"""

from __future__ import annotations

import uuid
from typing import Final

CLAIMED: Final = "c:"
APPLIED: Final = "1"
# How long an "applied" marker the broadcaster creates lives (the gateway's done_ttl_s default).
APPLIED_TTL_S: Final = 7 * 24 * 3600


def ticket_key(prefix: str, action_id: uuid.UUID | str) -> str:
    """The key of an action's ticket."""
    return f"{prefix}ticket:{action_id}"


def done_key(prefix: str, action_id: uuid.UUID | str) -> str:
    """The key of an action's redemption marker."""
    return f"{prefix}done:{action_id}"
