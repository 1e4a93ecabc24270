"""Announcing the moderation log on ``scoreboard.user-removals.v1``, exactly once.

Auth appends bans, unbans and deletions to ``moderation_events`` (common.moderation); this task
turns each entry into a UserRemoved or UserRestored event in the outbox and marks the entry
published, in one transaction, so the relay publishes each exactly once (score/relay.py) and
integrators learn of removals from Kafka, not only from the board. Entries are taken in log
order under a row lock (a second announcer waits, then finds them published), and only the
replica that leads the relay announces, as for closed periods (score/closer.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Final

import asyncpg
import structlog

from common.backoff import Backoff, wait_or_stop
from common.events import (
    SCORE_SOURCE,
    UserRemoved,
    UserRemovedEvent,
    UserRestored,
    UserRestoredEvent,
    encode,
)
from score.outbox import REMOVALS_STREAM
from score.settings import Settings
from score.store import NOTIFY_CHANNEL

log = structlog.get_logger(__name__)

_BATCH: Final = 500
_PENDING = """
SELECT seq, user_id, action, at FROM moderation_events
WHERE published_at IS NULL ORDER BY seq LIMIT $1
FOR UPDATE
"""
_PUBLISHED = "UPDATE moderation_events SET published_at = now() WHERE seq = ANY($1::bigint[])"
_OUTBOX = "INSERT INTO outbox (event_key, payload, stream) VALUES ($1, $2, $3)"


def event_for(seq: int, user_id: object, action: str, at: object) -> bytes:
    """The CloudEvent announcing one moderation log entry."""
    if action == "unbanned":
        restored = UserRestored.model_validate({"user_id": user_id, "seq": seq, "at": at})
        return encode(UserRestoredEvent.wrap(restored, source=SCORE_SOURCE))
    removed = UserRemoved.model_validate(
        {"user_id": user_id, "reason": action, "seq": seq, "at": at}
    )
    return encode(UserRemovedEvent.wrap(removed, source=SCORE_SOURCE))


class ModerationAnnouncer:
    """Moves moderation log entries into the outbox."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self._pool = pool
        self._settings = settings

    async def run(self, stop: asyncio.Event, leading: Callable[[], bool]) -> None:
        """Announce what is pending every ``moderation_poll_s`` while this replica leads the
        relay, until ``stop`` is set."""
        backoff = Backoff(self._settings.retry_base_s, self._settings.retry_cap_s)
        while not stop.is_set():
            delay = self._settings.moderation_poll_s
            if leading():
                try:
                    while await self.announce_pending() == _BATCH:
                        pass
                    backoff.reset()
                except Exception as exc:
                    log.warning("moderation_announce_failed", error=repr(exc))
                    delay = backoff.next_delay()
            await wait_or_stop(stop, delay)

    async def announce_pending(self) -> int:
        """Put the oldest unannounced entries in the outbox; returns how many."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_PENDING, _BATCH)
            if not rows:
                return 0
            await conn.executemany(
                _OUTBOX,
                [(str(r["user_id"]).encode(), event_for(*r), REMOVALS_STREAM) for r in rows],
            )
            await conn.execute(_PUBLISHED, [r["seq"] for r in rows])
            await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
        log.info("moderation_announced", entries=len(rows), last_seq=rows[-1]["seq"])
        return len(rows)
