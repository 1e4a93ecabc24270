"""The moderation log reaches Kafka exactly once (real PostgreSQL and Kafka): each ban, unban
and deletion is one event on scoreboard.user-removals.v1 (read_committed), in log order per
user, however many announcers run."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from common import moderation
from common.events import Topics, UserRemovedEvent, UserRestoredEvent
from score.metrics import ScoreMetrics
from score.moderation import ModerationAnnouncer
from score.relay import OutboxRelay
from score.settings import Settings
from services.score.tests.support import add_users, read_to_end

pytestmark = pytest.mark.integration


async def _ours(settings: Settings, keys: set[bytes], count: int) -> list[Any]:
    topic = Topics(settings.topic_prefix).removals
    async with asyncio.timeout(30):
        while True:
            records = [r for r in await read_to_end(settings, topic) if r.key in keys]
            if len(records) >= count:
                return records
            await asyncio.sleep(0.2)


async def test_each_moderation_entry_is_announced_once_in_order(
    pool: asyncpg.Pool, pg: asyncpg.Connection, settings: Settings
) -> None:
    alice, bob = await add_users(pg, 2)
    async with pg.transaction():
        banned = await moderation.record(pg, alice, "banned")
    async with pg.transaction():
        unbanned = await moderation.record(pg, alice, "unbanned")
    async with pg.transaction():
        deleted = await moderation.record(pg, bob, "deleted")

    # Two announcers at once (two replicas leading in turn): the log is announced once.
    announced = await asyncio.gather(
        ModerationAnnouncer(pool, settings).announce_pending(),
        ModerationAnnouncer(pool, settings).announce_pending(),
    )
    assert sum(announced) >= 3
    assert await ModerationAnnouncer(pool, settings).announce_pending() == 0

    stop = asyncio.Event()
    relay = asyncio.create_task(
        OutboxRelay(settings, ScoreMetrics.create(CollectorRegistry())).run(stop)
    )
    try:
        keys = {str(alice).encode(), str(bob).encode()}
        records = await _ours(settings, keys, 3)
        await asyncio.sleep(1.0)  # later rounds would publish any copy
        records = await _ours(settings, keys, 3)
    finally:
        stop.set()
        await asyncio.wait_for(relay, 20)
    assert len(records) == 3
    by_user = {k: [json.loads(r.value) for r in records if r.key == k] for k in keys}
    alice_events = by_user[str(alice).encode()]
    assert [e["type"] for e in alice_events] == [
        "scoreboard.user.removed.v1",
        "scoreboard.user.restored.v1",
    ]
    removed = UserRemovedEvent.model_validate(alice_events[0])
    restored = UserRestoredEvent.model_validate(alice_events[1])
    assert (removed.id, removed.data.reason, removed.subject) == (
        f"moderation:{banned}",
        "banned",
        str(alice),
    )
    assert (restored.id, restored.data.seq) == (f"moderation:{unbanned}", unbanned)
    (gone,) = by_user[str(bob).encode()]
    assert UserRemovedEvent.model_validate(gone).data.model_dump(include={"reason", "seq"}) == {
        "reason": "deleted",
        "seq": deleted,
    }
    assert all(("content-type", b"application/cloudevents+json") in r.headers for r in records)
