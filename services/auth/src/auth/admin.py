"""Operator actions on accounts: ban, unban, delete, and the review of anomaly flags (the
``auth`` console commands).

PostgreSQL is changed first, then Redis tells the gateways. Each action is idempotent, so if
Redis was unreachable the operator simply runs the command again.

Flags are raised by the score service (``score/flags.py``) in ``player_flags``; an operator lists
them, clears one (a false alarm) or confirms one, which bans the player through :meth:`Admin.ban`.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import structlog

from auth.revocations import Revocations
from common import moderation
from common.keyspace import USER_BANNED, USER_DELETED
from common.removals import record_removal

log = structlog.get_logger(__name__)


class UnknownUser(LookupError):
    """No account has this name."""


class UnknownFlag(LookupError):
    """No flag has this id."""


class FlagAlreadyReviewed(Exception):
    """The flag was reviewed the other way already (a confirmed flag cannot be cleared, nor a
    cleared one confirmed: raise the question again by unbanning, or wait for a new flag)."""


FlagStatus = Literal["open", "cleared", "confirmed"]


@dataclass(frozen=True)
class Flag:
    """One row of ``player_flags`` with the player's name."""

    flag_id: uuid.UUID
    user_id: uuid.UUID
    username: str
    status: FlagStatus
    reason: str
    rate: float
    z: float
    median: float
    mad: float
    active_players: int
    flagged_at: datetime
    reviewed_at: datetime | None
    reviewed_by: str | None
    # Shadow quarantine: the most the public board shows of the player meanwhile (None: no hold).
    held_score: int | None

    def to_json(self) -> dict[str, Any]:
        """The flag as JSON-ready values (ids and times as strings)."""
        return {
            k: (
                str(v)
                if isinstance(v, uuid.UUID)
                else v.isoformat()
                if isinstance(v, datetime)
                else v
            )
            for k, v in asdict(self).items()
        }


_LIST_FLAGS = """
SELECT f.flag_id, f.user_id, u.username, f.status, f.reason, f.rate, f.z, f.median, f.mad,
       f.active_players, f.flagged_at, f.reviewed_at, f.reviewed_by, f.held_score
FROM player_flags f JOIN users u USING (user_id)
WHERE $1::text IS NULL OR f.status = $1
ORDER BY f.flagged_at DESC LIMIT $2
"""
_ONE_FLAG = """
SELECT f.flag_id, f.user_id, u.username, f.status, f.reason, f.rate, f.z, f.median, f.mad,
       f.active_players, f.flagged_at, f.reviewed_at, f.reviewed_by, f.held_score
FROM player_flags f JOIN users u USING (user_id)
WHERE f.flag_id = $1
"""


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
        """Ban the account and end all its sessions (tokens in flight get 403 at once); the
        boards drop the player (common.moderation)."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._moderate(conn, username, banned=True)
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
        """Lift a ban (the user logs in again; old sessions stay ended); the boards show the
        player's entries again."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await self._moderate(conn, username, banned=False)
        await self._revocations.set_user_status(row["user_id"], None)
        log.info("user_unbanned", user_id=str(row["user_id"]))
        return AdminResult(row["user_id"], row["username"], 0)

    @staticmethod
    async def _moderate(
        conn: asyncpg.pool.PoolConnectionProxy, username: str, *, banned: bool
    ) -> asyncpg.Record:
        """Set the ban flag; log the change in the moderation log only if it was one (running
        the command again changes and announces nothing)."""
        row = await conn.fetchrow(
            """SELECT user_id, username, banned FROM users WHERE lower(username) = lower($1)
               FOR UPDATE""",
            username,
        )
        if row is None:
            raise UnknownUser(username)
        if row["banned"] != banned:
            await conn.execute(
                "UPDATE users SET banned = $2 WHERE user_id = $1", row["user_id"], banned
            )
            await moderation.record(conn, row["user_id"], "banned" if banned else "unbanned")
        return row

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

    async def flags(self, status: FlagStatus | None = "open", limit: int = 100) -> list[Flag]:
        """Flags with ``status`` (every status: None), newest first."""
        rows = await self._pool.fetch(
            _LIST_FLAGS,
            status,
            limit,
        )
        return [Flag(**dict(r)) for r in rows]

    async def clear_flag(self, flag_id: uuid.UUID, by: str) -> Flag:
        """A false alarm: the flag is closed and nothing happens to the player."""
        flag = await self._review(flag_id, "cleared", by)
        log.warning(
            "security",
            reason="flag_cleared",
            flag_id=str(flag_id),
            user_id=str(flag.user_id),
            by=by,
        )
        return flag

    async def confirm_flag(self, flag_id: uuid.UUID, by: str) -> tuple[Flag, AdminResult]:
        """The player cheated: the flag is confirmed and the player banned (as ``auth ban``)."""
        flag = await self._review(flag_id, "confirmed", by)
        log.warning(
            "security",
            reason="flag_confirmed",
            flag_id=str(flag_id),
            user_id=str(flag.user_id),
            by=by,
        )
        return flag, await self.ban(flag.username)

    async def _review(self, flag_id: uuid.UUID, status: FlagStatus, by: str) -> Flag:
        """Move an open flag to ``status``; a flag already there stays as it was (the command
        may be run again, e.g. after Redis was unreachable for the ban)."""
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT status FROM player_flags WHERE flag_id = $1 FOR UPDATE", flag_id
            )
            if current is None:
                raise UnknownFlag(str(flag_id))
            if current == "open":
                if status == "cleared":
                    # The held points go onto the board: one more step of its version (0007).
                    await conn.execute(
                        """UPDATE board_hold_steps SET steps = steps + 1 WHERE EXISTS
                           (SELECT 1 FROM player_flags WHERE flag_id = $1
                            AND held_score IS NOT NULL)""",
                        flag_id,
                    )
                await conn.execute(
                    """UPDATE player_flags SET status = $2, reviewed_at = now(), reviewed_by = $3
                       WHERE flag_id = $1""",
                    flag_id,
                    status,
                    by,
                )
            elif current != status:
                raise FlagAlreadyReviewed(f"flag {flag_id} is {current}")
            row = await conn.fetchrow(_ONE_FLAG, flag_id)
        assert row is not None  # locked above, in this transaction
        return Flag(**dict(row))
