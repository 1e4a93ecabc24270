"""Signing keys: the JWKS, rotation without downtime, reloads across replicas, first-key race."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from auth.keys import (
    SigningKey,
    current_signing_key,
    ensure_signing_key,
    jwks_document,
    public_jwk,
    rotate_keys,
    thumbprint,
)
from auth.settings import Settings
from common.postgres import create_pool

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
RunCli = Callable[..., Awaitable[subprocess.CompletedProcess[str]]]
PASSWORD = "correct horse battery"


async def token_for(client: Client) -> str:
    """Register a fresh user, log in, return the access token."""
    name = f"k_{uuid.uuid4().hex[:12]}"
    resp = await client.post("/api/auth/register", json={"username": name, "password": PASSWORD})
    assert resp.status == 201
    resp = await client.post(
        "/api/auth/login",
        json={"username": name, "password": PASSWORD},
        headers={"X-Forwarded-For": f"10.8.{random.randrange(256)}.{random.randrange(256)}"},
    )
    assert resp.status == 200
    token: str = (await resp.json())["access_token"]
    return token


async def jwks(client: Client) -> dict[str, Any]:
    resp = await client.get("/.well-known/jwks.json")
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


def kid_of(token: str) -> str:
    kid: str = jwt.get_unverified_header(token)["kid"]
    return kid


def verify(token: str, document: dict[str, Any]) -> dict[str, Any]:
    """What a gateway does: pick the JWKS key by kid, verify with PyJWT."""
    key = jwt.PyJWKSet.from_dict(document)[kid_of(token)]
    claims: dict[str, Any] = jwt.decode(
        token, key, algorithms=["EdDSA"], audience="scoreboard", issuer="scoreboard-auth"
    )
    return claims


@pytest.fixture
async def pool(auth_settings: Callable[..., Settings]) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(auth_settings())
    yield pool
    await pool.close()


async def test_jwks_publishes_the_key_that_signs_tokens(client: Client) -> None:
    token = await token_for(client)
    resp = await client.get("/.well-known/jwks.json")
    assert resp.headers["Cache-Control"] == "public, max-age=60"
    document = await resp.json()
    assert document["keys"]
    for key in document["keys"]:
        assert key.keys() == {"kty", "crv", "x", "kid", "use", "alg"}
        assert (key["kty"], key["crv"], key["use"], key["alg"]) == (
            "OKP",
            "Ed25519",
            "sig",
            "EdDSA",
        )
        assert key["kid"] == thumbprint(key)
    assert kid_of(token) in {k["kid"] for k in document["keys"]}
    assert verify(token, document)["aud"] == "scoreboard"


async def test_rotation_publishes_first_signs_later_and_old_tokens_keep_verifying(
    make_client: MakeClient, auth_cli: RunCli, pool: asyncpg.Pool
) -> None:
    client = await make_client(key_publish_ahead_s=2.0, key_reload_s=0.2)
    old_token = await token_for(client)
    old_kid = kid_of(old_token)

    done = await auth_cli("rotate-keys", key_publish_ahead_s="2.0", key_reload_s="0.2")
    assert done.returncode == 0, done.stderr
    rotation = json.loads(done.stdout)
    new_kid, activates_at = rotation["kid"], datetime.fromisoformat(rotation["activates_at"])
    assert old_kid in {r["kid"] for r in rotation["retiring"]}

    # This replica picks the new key up on its next reload and publishes it at once...
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while new_kid not in {k["kid"] for k in (await jwks(client))["keys"]}:
        assert loop.time() < deadline, "the new key never reached the JWKS"
        await asyncio.sleep(0.05)
    assert datetime.now(UTC) < activates_at, "published only after it started signing"
    # ...but signs with it only from its activation on.
    before = datetime.now(UTC)
    token = await token_for(client)
    after = datetime.now(UTC)
    if after < activates_at:
        assert kid_of(token) == old_kid
    elif before >= activates_at:
        assert kid_of(token) == new_kid

    await asyncio.sleep(max(0.0, (activates_at - datetime.now(UTC)).total_seconds()) + 0.05)
    new_token = await token_for(client)
    assert kid_of(new_token) == new_kid
    # During the overlap the JWKS holds both keys: tokens from before and after both verify.
    document = await jwks(client)
    assert [k["kid"] for k in document["keys"]][:2] == [new_kid, old_kid]
    assert verify(old_token, document)
    assert verify(new_token, document)

    # The old key leaves only after the last token it signed has expired.
    retires_at = await pool.fetchval("SELECT retires_at FROM signing_keys WHERE kid = $1", old_kid)
    assert retires_at == activates_at + timedelta(seconds=900 + 60)


async def test_a_replica_reloads_keys_when_it_meets_an_unknown_kid(
    make_client: MakeClient, auth_settings: Callable[..., Settings], pool: asyncpg.Pool
) -> None:
    # This replica would not reload on its own for an hour.
    stale = await make_client(
        key_reload_s=3600, key_publish_ahead_s=7200, key_unknown_kid_reload_s=0
    )
    rotation = await rotate_keys(pool, auth_settings(key_publish_ahead_s=0.2, key_reload_s=0.1))
    await asyncio.sleep(max(0.0, (rotation.activates_at - datetime.now(UTC)).total_seconds()))
    fresh = await make_client()
    token = await token_for(fresh)
    assert kid_of(token) == rotation.kid
    resp = await stale.post("/api/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert resp.status == 204
    assert rotation.kid in {k["kid"] for k in (await jwks(stale))["keys"]}


async def test_replicas_starting_together_create_exactly_one_first_key(
    auth_settings: Callable[..., Settings], pool: asyncpg.Pool, make_client: MakeClient
) -> None:
    settings = auth_settings()
    await pool.execute("DELETE FROM signing_keys")
    pools = [await create_pool(settings) for _ in range(4)]
    try:
        created = await asyncio.gather(*(ensure_signing_key(p, settings) for p in pools))
    finally:
        for p in pools:
            await p.close()
    assert sum(kid is not None for kid in created) == 1
    assert await pool.fetchval("SELECT count(*) FROM signing_keys") == 1
    client = await make_client()
    assert kid_of(await token_for(client)) == next(k for k in created if k)


async def test_private_keys_can_be_stored_encrypted(
    make_client: MakeClient, pool: asyncpg.Pool
) -> None:
    await pool.execute("DELETE FROM signing_keys")
    try:
        client = await make_client(signing_key_passphrase="s3cret-from-a-k8s-secret")
        pem = await pool.fetchval("SELECT private_key_pem FROM signing_keys")
        assert pem.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert verify(await token_for(client), await jwks(client))

        # A replica without the passphrase cannot sign; it says so instead of minting its own key.
        blind = await make_client()
        ready = await blind.get("/readyz")
        assert ready.status == 503
        assert (await ready.json())["checks"]["signing_key"] != "ok"
        resp = await blind.post("/api/auth/login", json={"username": "nobody", "password": "x"})
        assert resp.status in {401, 503}
        assert await pool.fetchval("SELECT count(*) FROM signing_keys") == 1
    finally:
        # Later tests' replicas have no passphrase: let them create a plain key.
        await pool.execute("DELETE FROM signing_keys")


def _key(activates_at: datetime, retires_at: datetime | None = None) -> SigningKey:
    private = Ed25519PrivateKey.generate()
    jwk = public_jwk(private.public_key())
    return SigningKey(jwk["kid"], private, private.public_key(), jwk, activates_at, retires_at)


def test_schedule_picks_the_newest_active_key_and_publishes_until_retirement() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    activation = t0 + timedelta(seconds=120)
    retirement = activation + timedelta(seconds=960)
    old, new = _key(t0 - timedelta(days=1), retirement), _key(activation)
    keys = [old, new]

    def published(at: datetime) -> list[str]:
        return [k["kid"] for k in jwks_document(keys, at)["keys"]]

    assert current_signing_key(keys, t0) is old
    assert published(t0) == [new.kid, old.kid]
    assert current_signing_key(keys, activation) is new
    assert published(retirement - timedelta(seconds=1)) == [new.kid, old.kid]
    assert published(retirement) == [new.kid]
    assert current_signing_key([_key(activation)], t0) is None
