"""Operator actions on accounts: ban, unban, delete (the ``auth`` console commands).

PostgreSQL is changed first, then Redis tells the gateways. Each action is idempotent, so if
Redis was unreachable the operator simply runs the command again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg
import structlog

from auth.revocations import Revocations
from common.keyspace import USER_BANNED, USER_DELETED
from common.removals import record_removal

log = structlog.get_logger(__name__)


class UnknownUser(LookupError):
    """No account has this name."""


@dataclass(frozen=True)
class AdminResult:
    """Whom an action hit and how many live sessions it ended."""

    user_id: uuid.UUID
    username: str
    sessions_revoked: int


class Admin:
    """Ban, unban and delete accounts, and revoke what they could still use."""

    def __init__(self, pool: asyncpg.Pool, revocations: Revocations) -> None:
        self._pool = pool
        self._revocations = revocations

    async def ban(self, username: str) -> AdminResult:
        """Ban the account and end all its sessions (tokens in flight get 403 at once)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """UPDATE users SET banned = true WHERE lower(username) = lower($1)
                   RETURNING user_id, username""",
                username,
            )
            if row is None:
                raise UnknownUser(username)
            sessions = await conn.fetch(
                """UPDATE login_sessions SET revoked_at = now()
                   WHERE user_id = $1 AND revoked_at IS NULL RETURNING session_id""",
                row["user_id"],
            )
        session_ids = [s["session_id"] for s in sessions]
        await self._revocations.set_user_status(row["user_id"], USER_BANNED)
        await self._revocations.sessions_revoked(session_ids)
        log.info("user_banned", user_id=str(row["user_id"]), sessions_revoked=len(session_ids))
        return AdminResult(row["user_id"], row["username"], len(session_ids))

    async def unban(self, username: str) -> AdminResult:
        """Lift a ban (the user logs in again; old sessions stay ended)."""
        row = await self._pool.fetchrow(
            """UPDATE users SET banned = false WHERE lower(username) = lower($1)
               RETURNING user_id, username""",
            username,
        )
        if row is None:
            raise UnknownUser(username)
        await self._revocations.set_user_status(row["user_id"], None)
        log.info("user_unbanned", user_id=str(row["user_id"]))
        return AdminResult(row["user_id"], row["username"], 0)

    async def delete(self, username: str) -> AdminResult:
        """Delete the account with its sessions and tokens (its score rows cascade too), and
        take it off the live board."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT user_id, username FROM users WHERE lower(username) = lower($1)
                   FOR UPDATE""",
                username,
            )
            if row is None:
                raise UnknownUser(username)
            live = await conn.fetchval(
                """SELECT count(*) FROM login_sessions
                   WHERE user_id = $1 AND revoked_at IS NULL""",
                row["user_id"],
            )
            # The board drops the user too (a deleted player must not stay on a public board).
            await record_removal(conn, row["user_id"])
            await conn.execute("DELETE FROM users WHERE user_id = $1", row["user_id"])
        # "deleted" makes every gateway answer 401 for the user's tokens; per-session keys are
        # not needed on top.
        await self._revocations.set_user_status(row["user_id"], USER_DELETED)
        log.info("user_deleted", user_id=str(row["user_id"]), sessions_revoked=live)
        return AdminResult(row["user_id"], row["username"], int(live))
