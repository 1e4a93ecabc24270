"""Action tickets: issued when an action starts, redeemed once when it completes.

``POST /api/actions`` stores a ticket in Redis (``P ticket:{action_id}``, TTL ``ticket_ttl_s``) and
hands the client ``action_hash``, an HMAC-SHA256 over ``v2|action_id|user_id|action_type`` under
the first configured key (``<key id>.<hex>``; every configured key verifies, so keys rotate by
prepending a new one; see :class:`TicketSigner` for version 1). Completing the action redeems the
ticket; ``P done:{action_id}`` makes the redemption happen at most once, whatever the
concurrency: it holds the claim while the command is published, and the broadcaster turns it into
"applied" and deletes the ticket once the ScoreChanged arrives (see :mod:`common.actions`). A
claim whose gateway died before Kafka acknowledged is taken over by a retry after
``claim_stale_after_s``."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from common.actions import CLAIMED, done_key, ticket_key
from common.problems import BadRequest, Conflict
from gateway.catalog import ActionSpec, Catalog
from gateway.security import Rejection
from gateway.settings import HmacKey

log = structlog.get_logger(__name__)


# Whether an action's done marker stops a redemption: applied ("1", or any value that is not a
# claim), or claimed ("c:<ms>") less than ``stale_ms`` before ``now`` (see common.actions).
CLAIM_LUA_FUNCTION = """
local function blocks(marker, now, stale_ms)
  if not marker then return false end
  local claimed = tonumber(string.match(marker, '^c:(%d+)$'))
  return claimed == nil or now - claimed < stale_ms
end
"""

# KEYS: done marker. ARGV: done TTL (s), now (ms), stale after (ms).
_CLAIM_LUA = (
    CLAIM_LUA_FUNCTION
    + """
if blocks(redis.call('GET', KEYS[1]), tonumber(ARGV[2]), tonumber(ARGV[3])) then
  return 0
end
redis.call('SET', KEYS[1], 'c:' .. ARGV[2], 'EX', ARGV[1])
return 1
"""
)

# KEYS: done marker. ARGV: the claim's value. Deletes the marker only if it is still that claim.
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class AlreadyCompleted(Conflict, Rejection):
    """409: this action id was already submitted."""

    reason = "duplicate_action"


class TicketRejected(BadRequest, Rejection):
    """400: the completion does not match a valid ticket, or is not plausible."""

    def __init__(self, detail: str, *, reason: str) -> None:
        super().__init__(detail)
        self.reason = reason


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


class TicketSigner:
    """HMAC-SHA256 action hashes with key rotation: the first key signs, all keys verify.

    Version 2 (the default) signs ``v2|action_id|user_id|action_type``: everything in it comes
    with the completion (the user from the token), so a hash can be checked before Redis is
    asked anything, and the whole redemption takes one round trip (gateway.admission). The
    ticket's ``issued_at`` is not needed in the MAC: the server stores it and never takes it
    from the client. Version 1 also signed ``issued_at``; both always verify, so tickets issued
    before an upgrade stay redeemable (set ``action_hash_version=1`` while a gateway that only
    knows version 1 still runs).
    """

    def __init__(self, keys: Sequence[HmacKey], *, version: int = 2) -> None:
        if not keys:
            raise ValueError("at least one HMAC key is required")
        if version not in (1, 2):
            raise ValueError("action hash version must be 1 or 2")
        self._signing_id = keys[0].key_id
        self._keys = {k.key_id: k.secret.get_secret_value().encode() for k in keys}
        self._version = version

    @staticmethod
    def _mac(
        key: bytes,
        action_id: uuid.UUID,
        user_id: uuid.UUID,
        action_type: str,
        issued_at: datetime | None,
    ) -> str:
        fields = [str(action_id), str(user_id), action_type]
        if issued_at is None:
            message = "|".join(("v2", *fields))
        else:
            message = "|".join(("v1", *fields, isoformat(issued_at)))
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, ticket: Ticket) -> str:
        """``<key id>.<hex HMAC>`` for the ticket."""
        issued_at = ticket.issued_at if self._version == 1 else None
        key = self._keys[self._signing_id]
        mac = self._mac(key, ticket.action_id, ticket.user_id, ticket.action_type, issued_at)
        return f"{self._signing_id}.{mac}"

    def _matches(
        self,
        action_hash: str,
        action_id: uuid.UUID,
        user_id: uuid.UUID,
        action_type: str,
        issued_at: datetime | None,
    ) -> bool:
        key_id, sep, mac = action_hash.partition(".")
        key = self._keys.get(key_id)
        if not sep or key is None:
            return False
        expected = self._mac(key, action_id, user_id, action_type, issued_at)
        return hmac.compare_digest(mac.encode(), expected.encode())

    def verify_completion(
        self, action_hash: str, action_id: uuid.UUID, user_id: uuid.UUID, action_type: str
    ) -> bool:
        """Whether ``action_hash`` is our version-2 hash for exactly this completion."""
        return self._matches(action_hash, action_id, user_id, action_type, None)

    def verify(self, action_hash: str, ticket: Ticket) -> bool:
        """Whether ``action_hash`` was made by one of our keys for this ticket (either version)."""
        return self._matches(
            action_hash, ticket.action_id, ticket.user_id, ticket.action_type, None
        ) or self._matches(
            action_hash, ticket.action_id, ticket.user_id, ticket.action_type, ticket.issued_at
        )


class TicketStore:
    """Tickets and completion markers in Redis."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        signer: TicketSigner,
        *,
        ttl_s: int,
        done_ttl_s: int,
        claim_stale_after_s: float = 15.0,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self.signer = signer
        self._ttl = ttl_s
        self.done_ttl_s = done_ttl_s
        self.stale_after_ms = round(claim_stale_after_s * 1000)
        self._claim = redis.register_script(_CLAIM_LUA)
        self._release = redis.register_script(_RELEASE_LUA)

    def keys(self, action_id: uuid.UUID) -> tuple[str, str]:
        """The Redis keys of an action: its completion marker and its ticket."""
        return done_key(self._prefix, action_id), ticket_key(self._prefix, action_id)

    async def issue(self, user_id: uuid.UUID, action_type: str) -> tuple[Ticket, str]:
        """Store a new ticket; returns it with its action hash."""
        issued = now_ms()
        ticket = Ticket(
            action_id=uuid.uuid4(),
            user_id=user_id,
            action_type=action_type,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=self._ttl),
        )
        await self._redis.set(
            ticket_key(self._prefix, ticket.action_id), ticket.to_json(), ex=self._ttl
        )
        return ticket, self.signer.sign(ticket)

    async def claim(self, ticket: Ticket, now: datetime) -> bool:
        """Redeem the ticket: mark the action claimed at ``now`` (see :mod:`common.actions`).

        False if another request got there first (or the action was applied). The ticket stays
        until the broadcaster confirms the action applied, so a retry can take over a claim
        whose gateway died before Kafka acknowledged.
        """
        claimed = await self._claim(
            keys=[done_key(self._prefix, ticket.action_id)],
            args=[self.done_ttl_s, epoch_ms(now), self.stale_after_ms],
        )
        return bool(claimed)

    async def release(self, ticket: Ticket, claimed_at: datetime) -> None:
        """Undo a claim made at ``claimed_at`` (the command was not published), unless the
        action was meanwhile confirmed applied: a retry of the same request then succeeds."""
        await self._release(
            keys=[done_key(self._prefix, ticket.action_id)], args=[claim_value(claimed_at)]
        )


def claim_value(claimed_at: datetime) -> str:
    """The done marker's value while a claim made at ``claimed_at`` is being published."""
    return f"{CLAIMED}{epoch_ms(claimed_at)}"


def rejection(
    reason: str, *, action_type: str, spec: ActionSpec | None = None, elapsed_ms: float = 0.0
) -> TicketRejected:
    """The 400 for a completion that does not match its ticket, by reason."""
    if reason == "too_fast" and spec is not None:
        return TicketRejected(
            f"completed after {elapsed_ms:.0f} ms; '{action_type}' takes at least "
            f"{spec.min_duration_ms} ms",
            reason=reason,
        )
    if reason == "points_mismatch" and spec is not None:
        return TicketRejected(
            f"points must be {spec.points} for '{action_type}' (the catalog decides)",
            reason=reason,
        )
    detail = {
        "ticket_unknown": "unknown or expired action_id",
        "ticket_not_yours": "this action was issued to another user",
        "hash_invalid": "action_hash does not verify",
        "type_mismatch": "action_type does not match the ticket",
    }[reason]
    return TicketRejected(detail, reason=reason)


def check_completion(
    ticket: Ticket | None,
    *,
    user_id: uuid.UUID,
    action_type: str,
    action_hash: str,
    points: int | None,
    catalog: Catalog,
    signer: TicketSigner,
    now: datetime,
) -> tuple[Ticket, ActionSpec]:
    """Check a completion against its ticket, in the contract's order.

    Returns the ticket and its catalog entry. (gateway.admission makes the same checks in Redis
    when the hash verifies up front; this is the path for everything else.)

    400 for: unknown or expired ticket, someone else's ticket, a hash that does not verify, an
    action type other than the ticket's, completion sooner than the action's minimum duration,
    or client-sent points that differ from the catalog's.
    """
    if ticket is None or ticket.expires_at <= now:
        raise rejection("ticket_unknown", action_type=action_type)
    if ticket.user_id != user_id:
        raise rejection("ticket_not_yours", action_type=action_type)
    if not signer.verify(action_hash, ticket):
        raise rejection("hash_invalid", action_type=action_type)
    if action_type != ticket.action_type:
        raise rejection("type_mismatch", action_type=action_type)
    spec = catalog.get(ticket.action_type)
    elapsed_ms = (now - ticket.issued_at) / timedelta(milliseconds=1)
    if spec.min_duration_ms > 0 and elapsed_ms < spec.min_duration_ms:  # 0: any clock skew is fine
        raise rejection("too_fast", action_type=action_type, spec=spec, elapsed_ms=elapsed_ms)
    if points is not None and points != spec.points:
        raise rejection("points_mismatch", action_type=action_type, spec=spec)
    return ticket, spec


ticket_store_key = web.AppKey("ticket_store", TicketStore)
