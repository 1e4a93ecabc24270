"""Refresh-token rotation, reuse detection and logout, on the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import asyncpg
import jwt
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.components import components_key
from auth.sessions import token_hash
from auth.settings import Settings

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse battery"


async def logged_in(client: Client) -> dict[str, Any]:
    """Register a fresh user and log in; the token response plus the decoded claims."""
    name = f"s_{uuid.uuid4().hex[:12]}"
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201
    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": PASSWORD},
        headers={"X-Forwarded-For": f"10.9.{random.randrange(256)}.{random.randrange(256)}"},
    )
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    body["claims"] = jwt.decode(body["access_token"], options={"verify_signature": False})
    return body


async def refresh(client: Client, token: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/auth/refresh", json={"refresh_token": token})
    body: dict[str, Any] = await resp.json(content_type=None)
    return resp.status, body


def revoked_key(settings: Settings, sid: str) -> str:
    return f"{settings.redis_prefix}revoked-session:{sid}"


async def test_refresh_rotates_and_the_token_works_once(
    client: Client, pg: asyncpg.Connection
) -> None:
    first = await logged_in(client)
    status, second = await refresh(client, first["refresh_token"])
    assert status == 200
    assert second.keys() == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert second["refresh_token"] != first["refresh_token"]
    claims = jwt.decode(second["access_token"], options={"verify_signature": False})
    assert claims["sid"] == first["claims"]["sid"]
    assert claims["sub"] == first["claims"]["sub"]
    assert claims["jti"] != first["claims"]["jti"]
    used_at = await pg.fetchval(
        "SELECT used_at FROM refresh_tokens WHERE token_hash = $1",
        token_hash(first["refresh_token"]),
    )
    assert used_at is not None


async def test_reusing_a_spent_token_revokes_the_whole_session(
    client: Client,
    pg: asyncpg.Connection,
    redis_client: aioredis.Redis,
    auth_settings: Callable[..., Settings],
) -> None:
    first = await logged_in(client)
    sid = first["claims"]["sid"]
    status, legit = await refresh(client, first["refresh_token"])
    assert status == 200

    # A thief replays the token that was already spent.
    status, problem = await refresh(client, first["refresh_token"])
    assert status == 401
    assert problem["status"] == 401
    assert await pg.fetchval(
        "SELECT revoked_at FROM login_sessions WHERE session_id = $1", uuid.UUID(sid)
    )
    # The token the legitimate rotation produced dies with the session...
    status, _ = await refresh(client, legit["refresh_token"])
    assert status == 401
    # ...and the gateways learn at once that the session's access tokens are dead.
    key = revoked_key(auth_settings(), sid)
    assert await redis_client.get(key) == b"1"
    assert 900 + 30 < await redis_client.ttl(key) <= 960  # a token's life plus the leeway


async def test_concurrent_refreshes_with_one_token_let_exactly_one_through(
    client: Client,
) -> None:
    first = await logged_in(client)
    results = await asyncio.gather(*(refresh(client, first["refresh_token"]) for _ in range(5)))
    assert Counter(status for status, _ in results) == {200: 1, 401: 4}
    # The losers presented a spent token: that is reuse, so the session is gone too.
    winner = next(body for status, body in results if status == 200)
    status, _ = await refresh(client, winner["refresh_token"])
    assert status == 401


async def test_unknown_and_expired_refresh_tokens_are_401(
    client: Client, pg: asyncpg.Connection
) -> None:
    status, _ = await refresh(client, "not-a-token-we-issued")
    assert status == 401
    session = await logged_in(client)
    await pg.execute(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
        token_hash(session["refresh_token"]),
    )
    status, _ = await refresh(client, session["refresh_token"])
    assert status == 401
    # Expiry is not theft: the session is not revoked for it.
    assert (
        await pg.fetchval(
            "SELECT revoked_at FROM login_sessions WHERE session_id = $1",
            uuid.UUID(session["claims"]["sid"]),
        )
        is None
    )


async def test_refresh_rejects_unknown_fields(client: Client) -> None:
    resp = await client.post("/api/auth/refresh", json={"refresh_token": "x", "sid": "y"})
    assert resp.status == 400


async def test_logout_revokes_the_session_for_gateways_and_refresh(
    client: Client, redis_client: aioredis.Redis, auth_settings: Callable[..., Settings]
) -> None:
    session = await logged_in(client)
    bearer = {"Authorization": f"Bearer {session['access_token']}"}
    resp = await client.post("/api/auth/logout", headers=bearer)
    assert resp.status == 204
    key = revoked_key(auth_settings(), session["claims"]["sid"])
    assert await redis_client.get(key) == b"1"
    # Kept longer than any token of the session can verify: its lifetime plus the gateways'
    # 30 s of clock-skew leeway (it used to expire with the token, and then verified again).
    assert 900 + 30 < await redis_client.ttl(key) <= 960
    status, _ = await refresh(client, session["refresh_token"])
    assert status == 401
    # Logging out twice is harmless.
    assert (await client.post("/api/auth/logout", headers=bearer)).status == 204


def _forged(claims: dict[str, Any], header: dict[str, Any]) -> str:
    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}."


async def test_logout_requires_a_token_we_signed(client: Client) -> None:
    session = await logged_in(client)
    claims, real = session["claims"], session["access_token"]
    kid = jwt.get_unverified_header(real)["kid"]
    now = int(time.time())
    foreign_key = Ed25519PrivateKey.generate()
    our_key = client.app[components_key].keystore.signing_key()

    def ours(**changes: Any) -> str:
        return jwt.encode(
            {**claims, **changes}, our_key.private_key, algorithm="EdDSA", headers={"kid": kid}
        )

    assert ours() == real  # Ed25519 is deterministic: we sign exactly as the service does
    bad_tokens = {
        "expired": ours(iat=now - 1000, nbf=now - 1000, exp=now - 60),
        "not yet valid": ours(nbf=now + 600),
        "wrong audience": ours(aud="someone-else"),
        "wrong issuer": ours(iss="evil"),
        "no sid": jwt.encode(
            {k: v for k, v in claims.items() if k != "sid"},
            our_key.private_key,
            algorithm="EdDSA",
            headers={"kid": kid},
        ),
        "missing": None,
        "garbage": "garbage",
        "alg none": _forged(claims, {"alg": "none", "kid": kid}),
        "HS256": jwt.encode(claims, "k" * 32, algorithm="HS256", headers={"kid": kid}),
        "foreign key, our kid": jwt.encode(
            claims, foreign_key, algorithm="EdDSA", headers={"kid": kid}
        ),
        "unknown kid": jwt.encode(claims, foreign_key, algorithm="EdDSA", headers={"kid": "x"}),
        "tampered": real[: real.index(".") + 1]
        + _forged({**claims, "sub": str(uuid.uuid4())}, {}).split(".")[1]
        + real[real.rindex(".") :],
        "truncated": real[:-10],
    }
    for label, token in bad_tokens.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        resp = await client.post("/api/auth/logout", headers=headers)
        assert resp.status == 401, label
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), label
    # None of them ended the session.
    status, _ = await refresh(client, session["refresh_token"])
    assert status == 200


async def test_prune_sweeps_expired_tokens_but_keeps_live_sessions(
    client: Client, pg: asyncpg.Connection
) -> None:
    dead, alive = await logged_in(client), await logged_in(client)
    dead_sid = uuid.UUID(dead["claims"]["sid"])
    await pg.execute(
        "UPDATE refresh_tokens SET expires_at = now() - interval '1 hour' WHERE session_id = $1",
        dead_sid,
    )
    await pg.execute(
        "UPDATE login_sessions SET created_at = now() - interval '30 days' WHERE session_id = $1",
        dead_sid,
    )
    assert await client.app[components_key].sessions.prune() >= 2
    assert not await pg.fetchval("SELECT 1 FROM login_sessions WHERE session_id = $1", dead_sid)
    status, _ = await refresh(client, alive["refresh_token"])
    assert status == 200
