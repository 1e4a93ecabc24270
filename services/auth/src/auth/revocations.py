"""What auth tells the gateways through Redis, so they react before access tokens expire.

The names and values are the shared keyspace's (:mod:`common.keyspace`):

- ``P revoked-session:{sid}`` = :data:`~common.keyspace.SESSION_REVOKED`, TTL = access-token
  lifetime (no token of that session can outlive it): written on logout, on refresh-token
  reuse, and for each session of a banned user.
- ``P user-status:{user_id}`` = :data:`~common.keyspace.USER_BANNED` |
  :data:`~common.keyspace.USER_DELETED`, no TTL; removed on unban.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

import redis.asyncio as aioredis

from common.keyspace import SESSION_REVOKED, revoked_session_key, user_status_key


class Revocations:
    """Writes the revocation keys the gateways read."""

    def __init__(self, redis: aioredis.Redis, prefix: str, access_ttl_s: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_s = access_ttl_s

    def session_key(self, session_id: uuid.UUID) -> str:
        """The key marking ``session_id`` revoked."""
        return revoked_session_key(self._prefix, session_id)

    def status_key(self, user_id: uuid.UUID) -> str:
        """The key holding ``user_id``'s status (absent when in good standing)."""
        return user_status_key(self._prefix, user_id)

    async def sessions_revoked(self, session_ids: Iterable[uuid.UUID]) -> None:
        """Mark sessions revoked for as long as any of their access tokens can live."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.set(self.session_key(sid), SESSION_REVOKED, ex=self._ttl_s)
            await pipe.execute()

    async def set_user_status(self, user_id: uuid.UUID, status: str | None) -> None:
        """Set :data:`~common.keyspace.USER_BANNED`/``USER_DELETED``, or clear it with ``None``."""
        if status is None:
            await self._redis.delete(self.status_key(user_id))
        else:
            await self._redis.set(self.status_key(user_id), status)
