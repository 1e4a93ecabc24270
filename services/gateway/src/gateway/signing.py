"""Action hashes: what proves a completion redeems a ticket this gateway issued.

``action_hash`` is ``<key id>.<hex>``, an HMAC-SHA256 over ``v2|action_id|user_id|action_type``
under the first configured key; every configured key verifies, so keys rotate by prepending a new
one. Everything signed comes with the completion (the user from the token), so a hash is checked
before Redis is asked anything, and the whole redemption takes one round trip
(:mod:`gateway.admission`). The ticket's ``issued_at`` is not in the MAC: the server stores it and
never takes it from the client.
"""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable, Sequence

from gateway.settings import HmacKey
from gateway.tickets import Ticket


class TicketSigner:
    """HMAC-SHA256 action hashes with key rotation: the first key signs, all keys verify."""

    def __init__(self, keys: Sequence[HmacKey]) -> None:
        if not keys:
            raise ValueError("at least one HMAC key is required")
        self._signing_id = keys[0].key_id
        self._keys = {k.key_id: k.secret.get_secret_value().encode() for k in keys}

    @staticmethod
    def _mac(key: bytes, action_id: uuid.UUID, user_id: uuid.UUID, action_type: str) -> str:
        message = f"v2|{action_id}|{user_id}|{action_type}"
        return hmac.digest(key, message.encode(), "sha256").hex()  # one-shot, in OpenSSL

    def sign(self, ticket: Ticket) -> str:
        """``<key id>.<hex HMAC>`` for the ticket."""
        key = self._keys[self._signing_id]
        mac = self._mac(key, ticket.action_id, ticket.user_id, ticket.action_type)
        return f"{self._signing_id}.{mac}"

    def verify(
        self, action_hash: str, action_id: uuid.UUID, user_id: uuid.UUID, action_type: str
    ) -> bool:
        """Whether ``action_hash`` is one of our keys' hash for exactly this completion."""
        key_id, sep, mac = action_hash.partition(".")
        key = self._keys.get(key_id)
        if not sep or key is None:
            return False
        expected = self._mac(key, action_id, user_id, action_type)
        return hmac.compare_digest(mac.encode(), expected.encode())

    def signed_type(
        self,
        action_hash: str,
        action_id: uuid.UUID,
        user_id: uuid.UUID,
        claimed_type: str,
        known_types: Iterable[str],
    ) -> str | None:
        """The action type ``action_hash`` was issued for (None: not ours at all).

        ``claimed_type`` (what the completion says) is tried first, so an honest completion costs
        one MAC; the others tell a hash for another type (400 type mismatch) from a forged one
        (400 hash invalid), as the contract orders them.
        """
        for action_type in (claimed_type, *(t for t in known_types if t != claimed_type)):
            if self.verify(action_hash, action_id, user_id, action_type):
                return action_type
        return None
