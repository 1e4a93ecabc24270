"""The moderation log: bans, unbans and deletions, in the order they committed.

Auth changes an account (``auth ban``, ``unban``, ``delete-user``) and, in the same transaction,
appends an entry with :func:`record` (a deletion through :func:`common.removals.record_removal`).
Two services read the log: the score service announces each entry on
``scoreboard.user-removals.v1`` through its outbox, exactly once (score/moderation.py), and the
broadcaster takes banned players off every board and window and puts unbanned ones back
(broadcaster/moderation.py). PostgreSQL notifies :data:`MODERATION_CHANNEL` at commit, so both
act at once; both also poll, so a missed notification only delays them.
"""

from __future__ import annotations

import uuid
from typing import Final, Literal

import asyncpg
from asyncpg.pool import PoolConnectionProxy

MODERATION_CHANNEL: Final = "board_moderation"

Action = Literal["banned", "unbanned", "deleted"]


async def record(
    conn: asyncpg.Connection | PoolConnectionProxy, user_id: uuid.UUID, action: Action
) -> int:
    """Append ``action`` on ``user_id`` to the log; returns its sequence number.

    Must run in the transaction that changes the account, and only when it did change (a second
    ban of a banned player records nothing)."""
    seq: int = await conn.fetchval(
        "INSERT INTO moderation_events (user_id, action) VALUES ($1, $2) RETURNING seq",
        user_id,
        action,
    )
    await conn.execute("SELECT pg_notify($1, $2)", MODERATION_CHANNEL, str(seq))
    return seq
