"""The ``player_flags`` table, as the score service writes it (raise, publish, sweep).

The row is the truth; the Kafka event is its announcement. A flag is inserted unpublished, sent,
then marked published; rows whose sending failed are found by :meth:`FlagStore.unpublished` and
sent again (at-least-once, with the same event id). Review (clear, confirm) is auth's
(``auth/admin.py``).
"""

from __future__ import annotations

import uuid

import asyncpg

from common.events import PlayerFlagged

# With quarantine ($11) the flag holds the player's score as it is now (the public board shows at
# most that until review), and the hold is one more step of the board (board_hold_steps, 0007).
_RAISE = """
WITH flag AS (
    INSERT INTO player_flags (flag_id, user_id, reason, rate, z, median, mad, active_players,
                              tau_s, flagged_at, held_score)
    SELECT $1, u.user_id, $2, $3, $4, $5, $6, $7, $8, $9,
           CASE WHEN $11::boolean THEN coalesce(s.score, 0) END
    FROM users u LEFT JOIN scores s USING (user_id) WHERE u.user_id = $10
    ON CONFLICT (user_id) WHERE status = 'open' DO NOTHING
    RETURNING flag_id, held_score
), step AS (
    UPDATE board_hold_steps SET steps = steps + 1
    WHERE EXISTS (SELECT 1 FROM flag WHERE held_score IS NOT NULL)
)
SELECT flag_id FROM flag
"""

_UNPUBLISHED = """
SELECT f.flag_id, f.user_id, u.username, f.reason, f.rate, f.z, f.median, f.mad,
       f.active_players, f.tau_s, f.flagged_at
FROM player_flags f JOIN users u USING (user_id)
WHERE f.published_at IS NULL AND f.flagged_at < now() - make_interval(secs => $1)
ORDER BY f.flagged_at
LIMIT $2
"""


class FlagStore:
    """Raises flags and tracks their publication; with ``quarantine``, a flag holds the
    player's board score (shadow quarantine, migration 0007)."""

    def __init__(self, pool: asyncpg.Pool, *, quarantine: bool = False) -> None:
        self._pool = pool
        self._quarantine = quarantine

    async def raise_flag(self, flag: PlayerFlagged) -> bool:
        """Record ``flag`` as open; False when the player already has an open flag (one review
        at a time) or no longer exists."""
        flag_id = await self._pool.fetchval(
            _RAISE,
            flag.flag_id,
            flag.reason,
            flag.rate,
            flag.z,
            flag.median,
            flag.mad,
            flag.active_players,
            flag.tau_s,
            flag.flagged_at,
            flag.user_id,
            self._quarantine,
        )
        return flag_id is not None

    async def mark_published(self, flag_id: uuid.UUID) -> None:
        """The flag's event is on the topic."""
        await self._pool.execute(
            "UPDATE player_flags SET published_at = now() WHERE flag_id = $1", flag_id
        )

    async def unpublished(self, *, older_than_s: float, limit: int = 100) -> list[PlayerFlagged]:
        """Flags raised more than ``older_than_s`` ago whose event was not sent (its sending
        failed, or its replica stopped in between), oldest first."""
        rows = await self._pool.fetch(_UNPUBLISHED, older_than_s, limit)
        return [
            PlayerFlagged(
                flag_id=r["flag_id"],
                user_id=r["user_id"],
                username=r["username"],
                reason=r["reason"],
                rate=r["rate"],
                z=r["z"],
                median=r["median"],
                mad=r["mad"],
                active_players=r["active_players"],
                tau_s=r["tau_s"],
                flagged_at=r["flagged_at"],
            )
            for r in rows
        ]
