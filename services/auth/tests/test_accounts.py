"""Registration and login through the real app, PostgreSQL and Redis."""

from __future__ import annotations

import hashlib
import random
import uuid
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from auth.components import components_key
from common.health import registry_key

Client = TestClient[web.Request, web.Application]
PASSWORD = "correct horse battery"


def new_name() -> str:
    return f"u_{uuid.uuid4().hex[:12]}"


def new_address() -> dict[str, str]:
    """A fresh client address (as the gateway forwards it), so tests never share counters."""
    return {"X-Forwarded-For": f"10.{random.randrange(256)}.{random.randrange(256)}.7"}


async def register(client: Client, name: str, password: str = PASSWORD) -> dict[str, Any]:
    resp = await client.post("/api/auth/register", json={"username": name, "password": password})
    assert resp.status == 201, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def jwks_verify(client: Client, token: str) -> dict[str, Any]:
    """Verify ``token`` with PyJWT against the service's published JWKS."""
    jwks = await (await client.get("/.well-known/jwks.json")).json()
    kid = jwt.get_unverified_header(token)["kid"]
    key = jwt.PyJWKSet.from_dict(jwks)[kid]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["EdDSA"], audience="scoreboard", issuer="scoreboard-auth"
    )
    return claims


async def test_register_stores_only_an_argon2id_hash(
    client: Client, pg: asyncpg.Connection
) -> None:
    name = new_name()
    body = await register(client, name)
    assert body == {"user_id": body["user_id"], "username": name}
    row = await pg.fetchrow(
        "SELECT password_hash, roles FROM users WHERE user_id = $1", uuid.UUID(body["user_id"])
    )
    assert row is not None
    assert row["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert PASSWORD not in row["password_hash"]
    assert row["roles"] == ["player"]


async def test_register_taken_name_in_any_case_is_409(client: Client) -> None:
    name = new_name()
    await register(client, name)
    resp = await client.post(
        "/api/auth/register", json={"username": name.upper(), "password": "another password"}
    )
    assert resp.status == 409
    assert resp.content_type == "application/problem+json"
    assert (await resp.json())["detail"] == "this username is taken"


async def test_concurrent_registrations_of_one_name_create_one_account(
    client: Client, pg: asyncpg.Connection
) -> None:
    import asyncio

    name = new_name()
    statuses = await asyncio.gather(
        *(
            client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
            for _ in range(5)
        )
    )
    assert sorted(r.status for r in statuses) == [201, 409, 409, 409, 409]
    count = await pg.fetchval("SELECT count(*) FROM users WHERE lower(username) = $1", name)
    assert count == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"username": "ab", "password": PASSWORD}, "username"),
        ({"username": "x" * 33, "password": PASSWORD}, "username"),
        ({"username": "bad name", "password": PASSWORD}, "username"),
        ({"username": "émile", "password": PASSWORD}, "username"),
        ({"username": "ok_name", "password": "short77"}, "password"),
        ({"username": "ok_name", "password": "p" * 129}, "password"),
        ({"username": "ok_name"}, "password"),
        ({"username": "ok_name", "password": PASSWORD, "roles": ["admin"]}, "roles"),
    ],
)
async def test_register_rejects_invalid_input_with_field_errors(
    client: Client, body: dict[str, Any], field: str
) -> None:
    resp = await client.post("/api/auth/register", json=body)
    assert resp.status == 400
    doc = await resp.json()
    assert [e["field"] for e in doc["errors"]] == [field]
    assert PASSWORD not in await resp.text()


async def test_register_accepts_the_boundaries(client: Client) -> None:
    suffix = uuid.uuid4().hex
    for name, password in [(f"a.{suffix[:1]}", "p" * 8), (f"Z-_{suffix[:29]}", "p" * 128)]:
        resp = await client.post(
            "/api/auth/register", json={"username": name, "password": password}
        )
        assert resp.status == 201, await resp.text()


async def test_register_body_must_be_json(client: Client) -> None:
    resp = await client.post("/api/auth/register", data=b"username=a", headers={})
    assert resp.status == 415
    resp = await client.post(
        "/api/auth/register", data=b"{", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400


async def test_login_issues_tokens_with_the_agreed_claims(
    client: Client, pg: asyncpg.Connection
) -> None:
    name = new_name()
    user = await register(client, name)
    resp = await client.post(
        "/api/auth/login",
        json={"username": name.upper(), "password": PASSWORD},
        headers=new_address(),
    )
    assert resp.status == 200
    assert resp.headers["Cache-Control"] == "no-store"
    body = await resp.json()
    assert body.keys() == {"access_token", "token_type", "expires_in", "refresh_token"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900

    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "EdDSA"
    claims = await jwks_verify(client, body["access_token"])
    assert claims.keys() == {
        "iss",
        "aud",
        "sub",
        "name",
        "roles",
        "iat",
        "nbf",
        "exp",
        "jti",
        "sid",
    }
    assert claims["sub"] == user["user_id"]
    assert claims["name"] == name
    assert claims["roles"] == ["player"]
    assert claims["exp"] - claims["iat"] == 900
    assert claims["nbf"] == claims["iat"]

    session = await pg.fetchrow(
        "SELECT user_id, revoked_at FROM login_sessions WHERE session_id = $1",
        uuid.UUID(claims["sid"]),
    )
    assert session is not None
    assert str(session["user_id"]) == user["user_id"]
    assert session["revoked_at"] is None
    # Only the SHA-256 of the refresh token is stored, in that session.
    stored = await pg.fetchval(
        "SELECT session_id FROM refresh_tokens WHERE token_hash = $1",
        hashlib.sha256(body["refresh_token"].encode()).digest(),
    )
    assert str(stored) == claims["sid"]
    assert len(body["refresh_token"]) >= 43  # 32 random bytes, base64url


async def test_wrong_password_and_unknown_user_get_the_same_401(client: Client) -> None:
    name = new_name()
    await register(client, name)
    wrong = await client.post(
        "/api/auth/login",
        json={"username": name, "password": "not it at all"},
        headers=new_address(),
    )
    unknown = await client.post(
        "/api/auth/login",
        json={"username": new_name(), "password": PASSWORD},
        headers=new_address(),
    )
    assert wrong.status == unknown.status == 401
    wrong_doc, unknown_doc = await wrong.json(), await unknown.json()
    for doc in (wrong_doc, unknown_doc):
        doc.pop("request_id")
    assert wrong_doc == unknown_doc


async def test_unknown_user_login_still_runs_a_password_hash(client: Client) -> None:
    registry = client.app[registry_key]
    labels = {"op": "verify"}

    def verifications() -> tuple[float, float]:
        count = registry.get_sample_value("scoreboard_auth_password_hash_seconds_count", labels)
        total = registry.get_sample_value("scoreboard_auth_password_hash_seconds_sum", labels)
        return count or 0.0, total or 0.0

    before_count, before_sum = verifications()
    resp = await client.post(
        "/api/auth/login",
        json={"username": new_name(), "password": PASSWORD},
        headers=new_address(),
    )
    assert resp.status == 401
    after_count, after_sum = verifications()
    assert after_count == before_count + 1
    # A real argon2id verification with the production parameters, not a shortcut.
    assert after_sum - before_sum > 0.005


async def test_login_counts_outcomes(client: Client) -> None:
    registry = client.app[registry_key]
    name = new_name()
    await register(client, name)
    address = new_address()
    await client.post(
        "/api/auth/login", json={"username": name, "password": PASSWORD}, headers=address
    )
    await client.post(
        "/api/auth/login", json={"username": name, "password": "nope nope"}, headers=address
    )

    def logins(outcome: str) -> float:
        value = registry.get_sample_value("scoreboard_auth_logins_total", {"outcome": outcome})
        return value or 0.0

    assert logins("success") >= 1
    assert logins("wrong_password") >= 1
    metrics = await (await client.get("/metrics")).text()
    assert 'scoreboard_auth_registrations_total{outcome="success"}' in metrics


async def test_login_rehashes_a_password_made_with_weaker_parameters(
    client: Client, pg: asyncpg.Connection
) -> None:
    from argon2 import PasswordHasher

    name = new_name()
    user = await register(client, name)
    weak = PasswordHasher(time_cost=1, memory_cost=8 * 1024, parallelism=1).hash(PASSWORD)
    await pg.execute(
        "UPDATE users SET password_hash = $1 WHERE user_id = $2", weak, uuid.UUID(user["user_id"])
    )
    resp = await client.post(
        "/api/auth/login", json={"username": name, "password": PASSWORD}, headers=new_address()
    )
    assert resp.status == 200
    stored = await pg.fetchval(
        "SELECT password_hash FROM users WHERE user_id = $1", uuid.UUID(user["user_id"])
    )
    assert stored.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert client.app[components_key].settings.argon2_memory_kib == 19456
