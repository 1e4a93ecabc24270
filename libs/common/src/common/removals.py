"""Removing a deleted user from the board: what the deleting transaction must record.

The auth service deletes accounts; the broadcaster owns the board. They share this: inside the
transaction that deletes the user (before the DELETE, whose cascade takes the scores row), call
:func:`record_removal`. It locks the user's scores row, so a score batch for the same user either
commits before (and its version is the one recorded) or finds the user gone afterwards (its
command is dead-lettered as for an unknown user). PostgreSQL delivers the notification at
commit; the broadcaster applies the removal to Redis and also polls, so a missed notification
only delays it. See ``migrations/0003_removed_users.sql`` for why the version is kept.
"""

from __future__ import annotations

import uuid

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from common import moderation

REMOVALS_CHANNEL = "board_removals"


async def record_removal(conn: asyncpg.Connection | PoolConnectionProxy, user_id: uuid.UUID) -> int:
    """Record that ``user_id`` leaves the board; returns the version it had (0: never scored).

    Must run in the transaction that deletes the user.
    """
    version: int | None = await conn.fetchval(
        "SELECT version FROM scores WHERE user_id = $1 FOR UPDATE", user_id
    )
    await conn.execute(
        """INSERT INTO removed_users (user_id, version) VALUES ($1, $2)
           ON CONFLICT (user_id) DO NOTHING""",
        user_id,
        version or 0,
    )
    await conn.execute("SELECT pg_notify($1, $2)", REMOVALS_CHANNEL, str(user_id))
    # Integrators learn of it from Kafka (the moderation log, announced by the score service).
    await moderation.record(conn, user_id, "deleted")
    return version or 0
