"""The internal REST API: top, a user's standing, /me, validation, and the PostgreSQL fallback."""

from __future__ import annotations

import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from common.health import registry_key
from testkit.broadcaster import Client, Player, SettingsFactory, new_player, seed, serve

T0 = datetime(2026, 2, 1, tzinfo=UTC)
# Far above anything another test seeds, so these players are the top of the shared database.
BASE = 10**12


@pytest.fixture(scope="module")
async def players(pg_module: asyncpg.Connection) -> list[Player]:
    """Three scored players (two tied, the earlier one ranks higher) and one who never scored."""
    a, b, c, idle = new_player("a"), new_player("b"), new_player("c"), new_player("idle")
    a.score, a.version, a.reached_at = BASE + 500, 3, T0 + timedelta(seconds=1)
    b.score, b.version, b.reached_at = BASE + 500, 2, T0
    c.score, c.version, c.reached_at = BASE + 900, 1, T0
    await seed(pg_module, [a, b, c, idle])
    return [c, b, a, idle]


@pytest.fixture(scope="module")
async def client(players: list[Player], make_settings: SettingsFactory) -> AsyncIterator[Client]:
    """One broadcaster for the module; its board is built from PostgreSQL at start."""
    async with serve(make_settings()) as client:
        yield client


async def test_top_lists_players_in_board_order(client: Client, players: list[Player]) -> None:
    resp = await client.get("/api/scoreboard/top", params={"limit": "3"})
    assert resp.status == 200
    body = await resp.json()
    assert [e["user_id"] for e in body["entries"]] == [str(p.user_id) for p in players[:3]]
    assert body["entries"][0] == {
        "rank": 1,
        "user_id": str(players[0].user_id),
        "username": players[0].username,
        "score": BASE + 900,
    }
    assert body["version"] >= 6  # at least the sum of the seeded versions
    assert datetime.fromisoformat(body["as_of"]).tzinfo is not None


@pytest.mark.parametrize("limit", ["0", "101", "ten", "-1", "1.5", "", " 5"])
async def test_top_rejects_bad_limits(client: Client, limit: str) -> None:
    resp = await client.get("/api/scoreboard/top", params={"limit": limit})
    assert resp.status == 400
    assert resp.content_type == "application/problem+json"
    assert "limit" in (await resp.json())["detail"]


async def test_top_limit_bounds_are_accepted(client: Client) -> None:
    for limit in ("1", "100"):
        resp = await client.get("/api/scoreboard/top", params={"limit": limit})
        assert resp.status == 200
    assert len((await (await client.get("/api/scoreboard/top")).json())["entries"]) <= 10


async def test_user_standing(client: Client, players: list[Player]) -> None:
    second = players[1]
    resp = await client.get(f"/api/scoreboard/users/{second.user_id}")
    assert resp.status == 200
    assert await resp.json() == {
        "user_id": str(second.user_id),
        "username": second.username,
        "score": BASE + 500,
        "rank": 2,
    }


async def test_user_who_never_scored_has_no_rank(client: Client, players: list[Player]) -> None:
    idle = players[3]
    body = await (await client.get(f"/api/scoreboard/users/{idle.user_id}")).json()
    assert body == {
        "user_id": str(idle.user_id),
        "username": idle.username,
        "score": 0,
        "rank": None,
    }


async def test_unknown_and_malformed_user_ids(client: Client) -> None:
    unknown = await client.get(f"/api/scoreboard/users/{uuid.uuid4()}")
    assert unknown.status == 404
    assert unknown.content_type == "application/problem+json"
    malformed = await client.get("/api/scoreboard/users/not-a-uuid")
    assert malformed.status == 400
    assert malformed.content_type == "application/problem+json"


async def test_guessed_ids_cost_one_lookup_each(client: Client) -> None:
    """ "No such player" is remembered: asking again for an unknown id is answered from memory."""
    registry = client.app[registry_key]
    guessed = uuid.uuid4()
    for _ in range(5):
        resp = await client.get(f"/api/scoreboard/users/{guessed}")
        assert resp.status == 404
    assert _sample(registry, "scoreboard_broadcaster_cache_hits_total", query="unknown_user") == 4


async def test_me_needs_the_gateways_user_header(client: Client, players: list[Player]) -> None:
    anonymous = await client.get("/api/scoreboard/me")
    assert anonymous.status == 401
    assert anonymous.content_type == "application/problem+json"
    me = await client.get(
        "/api/scoreboard/me", headers={"X-Scoreboard-User-Id": str(players[2].user_id)}
    )
    assert me.status == 200
    assert (await me.json())["rank"] == 3


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # nobody listens once the socket is closed


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_top_falls_back_to_postgres_when_redis_is_down(
    make_settings: SettingsFactory, players: list[Player]
) -> None:
    settings = make_settings(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")
    # Without Redis the consumer cannot build a board, so the app never gets ready: serve anyway.
    async with serve(settings, wait_ready=False) as down:
        app = down.app
        resp = await down.get("/api/scoreboard/top", params={"limit": "3"})
        assert resp.status == 200
        body = await resp.json()
        assert [e["user_id"] for e in body["entries"]] == [str(p.user_id) for p in players[:3]]
        assert [e["rank"] for e in body["entries"]] == [1, 2, 3]
        user = await down.get(f"/api/scoreboard/users/{players[1].user_id}")
        assert (await user.json())["rank"] == 2
        ready = await down.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["redis"].startswith("failed")
        registry = app[registry_key]
        fallbacks = _sample(
            registry,
            "scoreboard_broadcaster_fallbacks_total",
            query="top",
            reason="redis_unavailable",
        )
        assert fallbacks >= 1


async def test_without_redis_and_postgres_reads_say_unavailable(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings(
        redis_url=f"redis://127.0.0.1:{_closed_port()}/0",
        postgres_dsn=f"postgresql://scoreboard:scoreboard@127.0.0.1:{_closed_port()}/scoreboard",
    )
    async with serve(settings, wait_ready=False) as down:
        for path in ("/api/scoreboard/top", f"/api/scoreboard/users/{uuid.uuid4()}"):
            resp = await down.get(path)
            assert resp.status == 503
            assert resp.content_type == "application/problem+json"
