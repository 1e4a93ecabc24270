"""Operator commands: ban, unban, delete-user, through the real ``auth`` CLI and the domain."""

from __future__ import annotations

import json
import random
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import jwt
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.admin import Admin, UnknownUser
from auth.revocations import Revocations
from auth.settings import Settings
from common.postgres import create_pool

Client = TestClient[web.Request, web.Application]
RunCli = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]
PASSWORD = "correct horse battery"


async def login(client: Client, name: str, password: str = PASSWORD) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": password},
        headers={"X-Forwarded-For": f"10.7.{random.randrange(256)}.{random.randrange(256)}"},
    )
    body: dict[str, Any] = await resp.json(content_type=None)
    return resp.status, body


async def new_user(client: Client) -> tuple[str, str]:
    """Register and return (name, user_id)."""
    name = f"a_{uuid.uuid4().hex[:12]}"
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201
    return name, (await resp.json())["user_id"]


@pytest.fixture
async def admin(
    auth_settings: Callable[..., Settings], redis_client: aioredis.Redis
) -> AsyncIterator[Admin]:
    settings = auth_settings()
    pool = await create_pool(settings)
    yield Admin(pool, Revocations(redis_client, settings.redis_prefix, settings.access_ttl_s))
    await pool.close()


async def test_ban_from_the_cli_ends_sessions_and_blocks_login(
    client: Client,
    auth_cli: RunCli,
    redis_client: aioredis.Redis,
    auth_settings: Callable[..., Settings],
) -> None:
    prefix = auth_settings().redis_prefix
    name, user_id = await new_user(client)
    status, tokens = await login(client, name)
    assert status == 200
    sid = jwt.decode(tokens["access_token"], options={"verify_signature": False})["sid"]

    done = await auth_cli("ban", name.upper())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"user_id": user_id, "username": name, "sessions_revoked": 1}

    # Gateways see it at once: the status key (403 for every token) and the revoked session.
    assert await redis_client.get(f"{prefix}user-status:{user_id}") == b"banned"
    assert await redis_client.get(f"{prefix}revoked-session:{sid}") == b"1"
    # The session can no longer be refreshed; the right password gets 403, a wrong one 401
    # (the ban is not revealed to someone who does not know the password).
    resp = await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    status, problem = await login(client, name)
    assert status == 403
    assert problem["detail"] == "this account is banned"
    status, _ = await login(client, name, "not the password")
    assert status == 401


async def test_unban_lets_the_user_back_in(
    client: Client,
    admin: Admin,
    redis_client: aioredis.Redis,
    auth_settings: Callable[..., Settings],
) -> None:
    name, user_id = await new_user(client)
    await admin.ban(name)
    result = await admin.unban(name)
    assert str(result.user_id) == user_id
    assert await redis_client.exists(f"{auth_settings().redis_prefix}user-status:{user_id}") == 0
    status, _ = await login(client, name)
    assert status == 200


async def test_delete_user_removes_the_account_and_frees_the_name(
    client: Client,
    admin: Admin,
    redis_client: aioredis.Redis,
    auth_settings: Callable[..., Settings],
    pg: asyncpg.Connection,
) -> None:
    name, user_id = await new_user(client)
    status, tokens = await login(client, name)
    assert status == 200
    result = await admin.delete(name)
    assert result.sessions_revoked == 1
    # Recorded for the board (never scored: version 0), in the same transaction.
    removed = await pg.fetchval(
        "SELECT version FROM removed_users WHERE user_id = $1", uuid.UUID(user_id)
    )
    assert removed == 0
    prefix = auth_settings().redis_prefix
    assert await redis_client.get(f"{prefix}user-status:{user_id}") == b"deleted"
    status, _ = await login(client, name)
    assert status == 401
    resp = await client.post("/api/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert resp.status == 401
    # The name is free again, for a new account with a new id.
    _, again = await login(client, name)
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201
    assert (await resp.json())["user_id"] != user_id
    assert again["status"] == 401


async def test_commands_on_unknown_users_fail_clearly(admin: Admin, auth_cli: RunCli) -> None:
    with pytest.raises(UnknownUser):
        await admin.unban("nobody-by-this-name")
    done = await auth_cli("delete-user", "nobody-by-this-name")
    assert done.returncode == 1
    assert "no user named" in done.stderr
    assert done.stdout == ""


async def raise_flag(pg: asyncpg.Connection, user_id: str, rate: float = 98.5) -> uuid.UUID:
    """A flag as the score service raises it (score/flag_store.py)."""
    flag_id = uuid.uuid4()
    await pg.execute(
        """INSERT INTO player_flags (flag_id, user_id, reason, rate, z, median, mad,
               active_players, tau_s, flagged_at, published_at)
           VALUES ($1, $2, 'earning_rate', $3, 11.2, 12.0, 4.5, 51, 5.0, now(), now())""",
        flag_id,
        uuid.UUID(user_id),
        rate,
    )
    return flag_id


async def test_flags_are_listed_cleared_and_confirmed_as_a_ban(
    client: Client,
    auth_cli: RunCli,
    redis_client: aioredis.Redis,
    auth_settings: Callable[..., Settings],
    pg: asyncpg.Connection,
) -> None:
    _, honest_id = await new_user(client)
    cheat, cheat_id = await new_user(client)
    status, _ = await login(client, cheat)
    assert status == 200
    false_alarm = await raise_flag(pg, honest_id, rate=60.0)
    real = await raise_flag(pg, cheat_id)

    done = await auth_cli("flags")
    assert done.returncode == 0, done.stderr
    listed = {f["flag_id"]: f for f in json.loads(done.stdout)}
    assert {str(false_alarm), str(real)} <= set(listed)
    assert listed[str(real)]["username"] == cheat
    assert listed[str(real)]["status"] == "open"
    assert (listed[str(real)]["rate"], listed[str(real)]["z"]) == (98.5, 11.2)

    done = await auth_cli("clear-flag", str(false_alarm), "--by", "alice")
    assert done.returncode == 0, done.stderr
    cleared = json.loads(done.stdout)
    assert (cleared["status"], cleared["reviewed_by"]) == ("cleared", "alice")
    assert str(false_alarm) not in {
        f["flag_id"] for f in json.loads((await auth_cli("flags")).stdout)
    }
    # Clearing bans nobody.
    assert await redis_client.get(f"{auth_settings().redis_prefix}user-status:{honest_id}") is None

    done = await auth_cli("confirm-flag", str(real), "--by", "alice")
    assert done.returncode == 0, done.stderr
    confirmed = json.loads(done.stdout)
    assert confirmed["status"] == "confirmed"
    assert confirmed["ban"] == {"user_id": cheat_id, "username": cheat, "sessions_revoked": 1}
    prefix = auth_settings().redis_prefix
    assert await redis_client.get(f"{prefix}user-status:{cheat_id}") == b"banned"
    status, problem = await login(client, cheat)
    assert (status, problem["detail"]) == (403, "this account is banned")

    # Run again (e.g. Redis was down the first time): the same outcome, nothing changes.
    again = await auth_cli("confirm-flag", str(real))
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reviewed_by"] == "alice"
    # Reviewed one way, it cannot be reviewed the other way.
    done = await auth_cli("clear-flag", str(real))
    assert done.returncode == 1
    assert "is confirmed" in done.stderr
    everything = {
        f["flag_id"]: f["status"] for f in json.loads((await auth_cli("flags", "--all")).stdout)
    }
    assert everything[str(false_alarm)] == "cleared"
    assert everything[str(real)] == "confirmed"


async def test_flag_commands_refuse_unknown_and_malformed_ids(auth_cli: RunCli) -> None:
    done = await auth_cli("confirm-flag", str(uuid.uuid4()))
    assert done.returncode == 1
    assert "no flag" in done.stderr
    assert done.stdout == ""
    done = await auth_cli("clear-flag", "not-a-flag-id")
    assert done.returncode == 2  # argparse: invalid UUID value
    assert "invalid UUID value" in done.stderr


async def test_bans_unbans_and_deletions_are_logged_once_each_in_order(
    client: Client, admin: Admin, pg: asyncpg.Connection
) -> None:
    name, user_id = await new_user(client)
    await admin.ban(name)
    await admin.ban(name)  # again: no change, nothing logged
    await admin.unban(name)
    await admin.unban(name)
    await admin.ban(name)
    await admin.delete(name)
    rows = await pg.fetch(
        "SELECT seq, action FROM moderation_events WHERE user_id = $1 ORDER BY seq",
        uuid.UUID(user_id),
    )
    assert [r["action"] for r in rows] == ["banned", "unbanned", "banned", "deleted"]


async def test_clearing_a_held_flag_is_one_step_of_the_board(
    client: Client, admin: Admin, pg: asyncpg.Connection
) -> None:
    """Shadow quarantine (0007): clearing a flag that holds points releases them, which the
    board version counts; a flag that holds nothing, or one confirmed, moves nothing."""
    _, held_id = await new_user(client)
    _, plain_id = await new_user(client)
    _, cheat_id = await new_user(client)
    held, plain, cheat = (
        await raise_flag(pg, held_id),
        await raise_flag(pg, plain_id),
        await raise_flag(pg, cheat_id),
    )
    await pg.execute(
        "UPDATE player_flags SET held_score = 10 WHERE flag_id = ANY($1::uuid[])", [held, cheat]
    )
    steps = "SELECT steps FROM board_hold_steps"
    before = await pg.fetchval(steps)
    cleared = await admin.clear_flag(held, "test")
    assert (cleared.status, cleared.held_score) == ("cleared", 10)
    assert await pg.fetchval(steps) == before + 1
    await admin.clear_flag(held, "test")  # again: already cleared, nothing moves
    await admin.clear_flag(plain, "test")
    await admin.confirm_flag(cheat, "test")  # still held: the points never show
    assert await pg.fetchval(steps) == before + 1
