"""Action tickets: issued when an action starts, redeemed once when it completes.

``POST /api/actions`` stores a ticket in Redis (:func:`common.keyspace.ticket_key`, TTL
``ticket_ttl_s``) and hands the client its action hash (:mod:`gateway.signing`). Completing the
action redeems it (:mod:`gateway.admission`): the done marker (:mod:`gateway.claims`) makes that
happen at most once, and the broadcaster deletes the ticket once the action is applied.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis.asyncio as aioredis

from common.keyspace import ticket_key
from gateway.catalog import ActionSpec
from gateway.earning import ISSUE_LUA, EarningRules
from gateway.timestamps import epoch_ms, isoformat, now_ms


@dataclass(frozen=True)
class Ticket:
    """A started action, as stored in Redis."""

    action_id: uuid.UUID
    user_id: uuid.UUID
    action_type: str
    issued_at: datetime
    expires_at: datetime

    def to_json(self) -> str:
        """The stored form (the ``*_ms`` fields are what the admission script reads)."""
        return json.dumps(
            {
                "user_id": str(self.user_id),
                "action_type": self.action_type,
                "issued_at": isoformat(self.issued_at),
                "expires_at": isoformat(self.expires_at),
                "issued_ms": epoch_ms(self.issued_at),
                "expires_ms": epoch_ms(self.expires_at),
            }
        )

    @classmethod
    def from_json(cls, action_id: uuid.UUID, raw: bytes | str) -> Ticket:
        """Parse the stored form."""
        data = json.loads(raw)
        return cls(
            action_id=action_id,
            user_id=uuid.UUID(data["user_id"]),
            action_type=data["action_type"],
            issued_at=datetime.fromisoformat(data["issued_at"]),
            expires_at=datetime.fromisoformat(data["expires_at"]),
        )


class TicketStore:
    """Issues tickets into Redis, under the earning rules (:mod:`gateway.earning`)."""

    def __init__(
        self, redis: aioredis.Redis, prefix: str, earning: EarningRules, *, ttl_s: int
    ) -> None:
        self._redis = redis
        self._issue = redis.register_script(ISSUE_LUA)
        self._prefix = prefix
        self._earning = earning
        self._ttl = ttl_s

    async def issue(self, user_id: uuid.UUID, action_type: str, spec: ActionSpec) -> Ticket:
        """Store a new ticket for ``user_id``; 429 when an earning rule refuses it.

        At most ``spec.max_open`` tickets of the type stay open: the oldest is replaced.
        """
        issued = now_ms()
        ticket = Ticket(
            action_id=uuid.uuid4(),
            user_id=user_id,
            action_type=action_type,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=self._ttl),
        )
        keys, rule_args = self._earning.issue_input(
            ticket_key(self._prefix, ticket.action_id), user_id, action_type, spec, issued
        )
        args: list[str | int] = [
            ticket.to_json(),
            self._ttl,
            epoch_ms(issued),
            epoch_ms(ticket.expires_at),
        ]
        result = await self._issue(keys=keys, args=[*args, *rule_args])
        if result[0] == b"limited":
            raise self._earning.refused(result[1].decode(), action_type, issued, int(result[2]))
        # The replaced tickets, deleted once the script is done (it touches only its keys). A
        # completion of one racing this request may still count, as it would a moment earlier.
        for replaced in result[1:]:
            await self._redis.delete(replaced)
        return ticket
