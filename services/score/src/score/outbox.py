"""The outbox table as the relay sees it: unsent rows in id order, marking, retention.

Each row names its stream (migration 0006): ``score-changed`` (what the apply writes),
``period-closed`` (a closed period's final standings, score/closer.py) or ``user-removals``
(bans, unbans and deletions, score/moderation.py). The relay publishes them all in the same
Kafka transactions, in id order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final

import asyncpg
import msgspec

from common.events import STRUCTURED_MODE_HEADER, Topics

# pg_try_advisory_lock key: whoever holds it is the one relay that publishes (any replica).
RELAY_LOCK_ID = 0x5C0_2E1A7

# Every published record carries its row's id (decimal ASCII), so a new leader can tell from the
# topic itself which rows its predecessor committed to Kafka but had not marked sent.
OUTBOX_ID_HEADER = "x-outbox-id"

CHANGED_STREAM: Final = "score-changed"
PERIOD_CLOSED_STREAM: Final = "period-closed"
REMOVALS_STREAM: Final = "user-removals"


def stream_topics(prefix: str) -> dict[str, str]:
    """Each outbox stream's topic in the deployment of ``prefix``."""
    topics = Topics(prefix)
    return {
        CHANGED_STREAM: topics.changed,
        PERIOD_CLOSED_STREAM: topics.period_closed,
        REMOVALS_STREAM: topics.removals,
    }


_UNSENT = """
SELECT id, event_key, payload, headers::text, stream
FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT $1
"""

_decode_headers = msgspec.json.Decoder(dict[str, str]).decode


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One event waiting to be published on ``stream`` (``headers`` include its outbox id and
    the structured-mode content type, added here so rows written before it was have it too)."""

    id: int
    key: bytes
    payload: bytes
    headers: list[tuple[str, bytes]]
    stream: str = CHANGED_STREAM


class Outbox:
    """Queries over the outbox, on the relay's own connection (which also holds its lock)."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def try_lead(self) -> bool:
        """Take the relay lock if nobody holds it; it lasts as long as this connection."""
        return bool(await self._conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK_ID))

    async def unsent(self, limit: int) -> list[OutboxRow]:
        """The oldest unsent rows, in id order (per user, that is version order)."""
        return [
            OutboxRow(
                r[0],
                bytes(r[1]),
                bytes(r[2]),
                [
                    *((k, v.encode()) for k, v in _decode_headers(r[3]).items()),
                    (OUTBOX_ID_HEADER, str(r[0]).encode()),
                    STRUCTURED_MODE_HEADER,
                ],
                r[4],
            )
            for r in await self._conn.fetch(_UNSENT, limit)
        ]

    async def unsent_among(self, ids: Collection[int]) -> set[int]:
        """Which of ``ids`` are rows still waiting to be marked sent."""
        rows = await self._conn.fetch(
            "SELECT id FROM outbox WHERE id = ANY($1::bigint[]) AND sent_at IS NULL", list(ids)
        )
        return {r[0] for r in rows}

    async def mark_sent(self, ids: Collection[int]) -> None:
        """Record that these rows reached Kafka."""
        await self._conn.execute(
            "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", list(ids)
        )

    async def purge(self, older_than_s: float) -> int:
        """Delete rows sent more than ``older_than_s`` ago; returns how many."""
        status = await self._conn.execute(
            "DELETE FROM outbox WHERE sent_at < now() - make_interval(secs => $1)",
            older_than_s,
        )
        return int(status.rpartition(" ")[2])

    async def backlog(self) -> int:
        """How many rows wait to be published."""
        count = await self._conn.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        return int(count)
