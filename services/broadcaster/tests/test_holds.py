"""Shadow quarantine on the live board: real PostgreSQL, Redis and Kafka.

Flags are written into ``player_flags`` as the score service raises them with quarantine on
(score/flag_store.py: the score at that moment, one step of the board) and reviewed as auth does
(auth/admin.py: clearing is one more step). The player's points go to PostgreSQL and Kafka as
usual; the public board shows them as of the flag, the player sees their own real score, and
clearing the flag releases the points onto the board, live and after a rebuild alike.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from broadcaster.components import components_key
from testkit.broadcaster import (
    Client,
    Player,
    Send,
    SettingsFactory,
    high_score,
    new_player,
    next_frame,
    save_scores,
    seed,
    serve,
)

pytestmark = [pytest.mark.integration, pytest.mark.redis_cluster]


@pytest.fixture(autouse=True)
async def _no_holds_left(pg: asyncpg.Connection) -> AsyncIterator[None]:
    """Other tests compare the board with the scores table: leave no player held."""
    yield
    await pg.execute("DELETE FROM player_flags WHERE held_score IS NOT NULL")


async def raise_held_flag(pg: asyncpg.Connection, player: Player) -> uuid.UUID:
    """An open flag holding the player's current score (as score/flag_store.py raises it)."""
    flag_id = uuid.uuid4()
    async with pg.transaction():
        await pg.execute(
            """INSERT INTO player_flags (flag_id, user_id, reason, rate, z, median, mad,
                   active_players, tau_s, flagged_at, held_score)
               SELECT $1, user_id, 'earning_rate', 100, 9, 9, 2, 50, 5, now(), score
               FROM scores WHERE user_id = $2""",
            flag_id,
            player.user_id,
        )
        await pg.execute("UPDATE board_hold_steps SET steps = steps + 1")
    return flag_id


async def review(pg: asyncpg.Connection, flag_id: uuid.UUID, status: str) -> None:
    """Clear or confirm the flag (as auth/admin.py does; clearing releases a hold: one step)."""
    async with pg.transaction():
        if status == "cleared":
            await pg.execute("UPDATE board_hold_steps SET steps = steps + 1")
        await pg.execute(
            """UPDATE player_flags SET status = $2, reviewed_at = now(), reviewed_by = 'test'
               WHERE flag_id = $1""",
            flag_id,
            status,
        )


async def _get(client: Client, path: str, **headers: str) -> Any:
    async with client.get(path, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def public_score(client: Client, player: Player) -> int:
    """The player's score as anyone else sees it."""
    return int((await _get(client, f"/api/scoreboard/users/{player.user_id}"))["score"])


async def own_score(client: Client, player: Player) -> int:
    """The player's score as they see it themselves."""
    me = await _get(client, "/api/scoreboard/me", **{"X-Scoreboard-User-Id": str(player.user_id)})
    return int(me["score"])


async def until(check: Callable[[], Awaitable[bool]], wait_s: float = 10.0) -> None:
    """Wait until ``check()`` holds (the board catches up with PostgreSQL and Kafka)."""
    async with asyncio.timeout(wait_s):
        while not await check():  # noqa: ASYNC110 - the board announces nothing to tests
            await asyncio.sleep(0.02)


async def gain(pg: asyncpg.Connection, send: Send, player: Player, points: int) -> None:
    """The player earns ``points``: PostgreSQL first, then the event, as the score service."""
    change = player.gain(points)
    await save_scores(pg, [player])
    await send(change)


async def test_flagged_points_wait_off_the_board_until_the_flag_is_cleared(
    make_settings: SettingsFactory, pg: asyncpg.Connection, send: Send
) -> None:
    base = await high_score(pg)
    cheat, fair = new_player("held"), new_player("fair")
    cheat.gain(base + 100)
    fair.gain(base + 500)
    await seed(pg, [cheat, fair])
    flagged = base + 100
    async with serve(make_settings(holds_poll_s=0.05)) as client:
        flag_id = await raise_held_flag(pg, cheat)
        await gain(pg, send, cheat, 1_000)  # would overtake fair

        async def held() -> bool:
            # Whichever came first, the change or the hold: the same end.
            return (await own_score(client, cheat), await public_score(client, cheat)) == (
                cheat.score,
                flagged,
            )

        await until(held)
        top = await _get(client, "/api/scoreboard/top?limit=2")
        assert [(e["user_id"], e["score"]) for e in top["entries"]] == [
            (str(fair.user_id), fair.score),
            (str(cheat.user_id), flagged),
        ]
        # Their own rank is as if the points counted: first.
        me = await _get(
            client, "/api/scoreboard/me", **{"X-Scoreboard-User-Id": str(cheat.user_id)}
        )
        assert me["rank"] == 1
        headers = {"X-Scoreboard-User-Id": str(cheat.user_id)}
        async with client.ws_connect("/ws/scoreboard", headers=headers) as ws:
            frame = await next_frame(ws, "me", wait_s=2.0)
            assert (frame["score"], frame["rank"]) == (cheat.score, 1)

        # PostgreSQL is the truth: a board rebuilt from it holds the same, at no lower version.
        board = client.app[components_key].board
        before = (await _get(client, "/api/scoreboard/top?limit=2"))["version"]
        await board._redis.delete(*board.keys.board)
        assert await client.app[components_key].rebuilder.ensure_built()
        assert await public_score(client, cheat) == flagged
        assert await own_score(client, cheat) == cheat.score
        after = (await _get(client, "/api/scoreboard/top?limit=2"))["version"]
        assert after >= before

        # Cleared: the held points reach the board, and watchers see it (the version moves).
        await review(pg, flag_id, "cleared")

        async def released() -> bool:
            return await public_score(client, cheat) == cheat.score

        await until(released)
        top = await _get(client, "/api/scoreboard/top?limit=2")
        assert [e["user_id"] for e in top["entries"]] == [str(cheat.user_id), str(fair.user_id)]
        assert top["version"] > after
        # Later points count at once; a rebuild lands at least as high again.
        await gain(pg, send, cheat, 5)

        async def counted() -> bool:
            return await public_score(client, cheat) == cheat.score

        await until(counted)
        live = (await _get(client, "/api/scoreboard/top?limit=2"))["version"]
        await board._redis.delete(*board.keys.board)
        assert await client.app[components_key].rebuilder.ensure_built()
        assert await public_score(client, cheat) == cheat.score
        assert (await _get(client, "/api/scoreboard/top?limit=2"))["version"] >= live


async def test_a_confirmed_flag_keeps_the_points_off_the_board(
    make_settings: SettingsFactory, pg: asyncpg.Connection, send: Send
) -> None:
    base = await high_score(pg)
    cheat = new_player("held")
    cheat.gain(base + 100)
    await seed(pg, [cheat])
    async with serve(make_settings(holds_poll_s=0.05)) as client:
        flag_id = await raise_held_flag(pg, cheat)
        await review(pg, flag_id, "confirmed")
        await gain(pg, send, cheat, 1_000)

        async def applied() -> bool:
            return await own_score(client, cheat) == cheat.score

        await until(applied)
        await asyncio.sleep(0.2)  # a few polls of the holds
        assert await public_score(client, cheat) == base + 100

        # Something writes the entry unheld (an unban putting the player back): held again.
        board = client.app[components_key].board
        redis, keys = board._redis, board.keys
        raw = await redis.hget(keys.users, str(cheat.user_id))
        assert isinstance(raw, bytes)
        value = raw.decode()
        version, _, member, name = value.split("|")
        await redis.zadd(keys.rank, {member: cheat.score})
        await redis.hset(keys.users, str(cheat.user_id), f"{version}|{cheat.score}|{member}|{name}")

        async def held_again() -> bool:
            return await public_score(client, cheat) == base + 100

        await until(held_again)
        assert await own_score(client, cheat) == cheat.score


async def test_a_flag_without_a_hold_changes_nothing(
    make_settings: SettingsFactory, pg: asyncpg.Connection, send: Send
) -> None:
    """Quarantine off (the default): the flag records no held score and the board is live."""
    base = await high_score(pg)
    player = new_player("flagged")
    player.gain(base + 100)
    await seed(pg, [player])
    async with serve(make_settings(holds_poll_s=0.05)) as client:
        await pg.execute(
            """INSERT INTO player_flags (flag_id, user_id, reason, rate, z, median, mad,
                   active_players, tau_s, flagged_at)
               VALUES ($1, $2, 'earning_rate', 100, 9, 9, 2, 50, 5, $3)""",
            uuid.uuid4(),
            player.user_id,
            datetime.now(UTC),
        )
        await gain(pg, send, player, 1_000)

        async def live() -> bool:
            return await public_score(client, player) == player.score

        await until(live)
