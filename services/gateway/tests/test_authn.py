"""Access-token verification through the real app: forged tokens, revocation, bans, JWKS."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable

import pytest
import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from gateway.components import components_key
from gateway.tokens import InvalidToken
from services.gateway.tests.support import (
    Client,
    MakeGateway,
    SigningKey,
    TokenMint,
    Upstream,
    b64url,
    bearer,
    forge,
)

PROTECTED = "/api/actions"
BODY = {"action_type": "tap"}


def _hs256(key: bytes, header: dict[str, object], claims: dict[str, object]) -> str:
    unsigned = forge(header, claims).rsplit(".", 1)[0]
    return f"{unsigned}.{b64url(hmac.new(key, unsigned.encode(), hashlib.sha256).digest())}"


def _tamper(token: str, mint: TokenMint) -> str:
    head, _, sig = token.split(".")
    body = forge({}, mint.claims(uuid.uuid4())).split(".")[1]
    return f"{head}.{body}.{sig}"


def _forgeries(mint: TokenMint) -> dict[str, Callable[[], str]]:
    key = mint.key
    kid = key.kid
    raw_public = key.private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    pem_public = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    return {
        "alg none": lambda: forge({"alg": "none", "typ": "JWT", "kid": kid}, mint.claims()),
        "alg none, empty kid": lambda: forge({"alg": "none"}, mint.claims()),
        "HS256 with the raw public key": lambda: _hs256(
            raw_public, {"alg": "HS256", "kid": kid}, mint.claims()
        ),
        "HS256 with the PEM public key": lambda: _hs256(
            pem_public, {"alg": "HS256", "kid": kid}, mint.claims()
        ),
        "ES256 header on the EdDSA key": lambda: forge(
            {"alg": "ES256", "kid": kid}, mint.claims(), b"\x01" * 64
        ),
        "unknown kid": lambda: mint.mint(key=SigningKey.ed25519("not-published")),
        "another key under our kid": lambda: mint.mint(key=SigningKey.ed25519(kid)),
        "expired": lambda: mint.mint(iat=now - 700, nbf=now - 700, exp=now - 100),
        "nbf in the future": lambda: mint.mint(nbf=now + 120),
        "iat in the future": lambda: mint.mint(iat=now + 120, nbf=now, exp=now + 600),
        "wrong audience": lambda: mint.mint(aud="someone-else"),
        "wrong issuer": lambda: mint.mint(iss="https://evil.example"),
        "tampered payload": lambda: _tamper(mint.mint(), mint),
        "truncated": lambda: mint.mint()[:-12],
        "garbage": lambda: "not-a-jwt",
        "three garbage parts": lambda: "a.b.c",
        "no sid": lambda: mint.mint(sid=None),
        "no jti": lambda: mint.mint(jti=None),
        "no exp": lambda: mint.mint(exp=None),
        "subject not a user id": lambda: mint.mint(sub="admin"),
        "lifetime over 15 minutes": lambda: mint.mint(exp=now + 3600),
    }


FORGERY_NAMES = list(_forgeries(TokenMint(SigningKey.ed25519("x"))))


async def test_valid_token_is_accepted(gateway: Client, mint: TokenMint) -> None:
    resp = await gateway.post(PROTECTED, json=BODY, headers=bearer(mint.mint()))
    assert resp.status == 201, await resp.text()


@pytest.mark.parametrize("name", FORGERY_NAMES)
async def test_forged_tokens_are_401(gateway: Client, mint: TokenMint, name: str) -> None:
    token = _forgeries(mint)[name]()
    resp = await gateway.post(PROTECTED, json=BODY, headers=bearer(token))
    assert resp.status == 401, name
    assert resp.content_type == "application/problem+json"
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    doc = await resp.json(content_type=None)
    assert doc["status"] == 401


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer "}]
)
async def test_missing_or_non_bearer_credentials_are_401(
    gateway: Client, headers: dict[str, str]
) -> None:
    resp = await gateway.post(PROTECTED, json=BODY, headers=headers)
    assert resp.status == 401
    assert 'realm="scoreboard"' in resp.headers["WWW-Authenticate"]


@pytest.mark.parametrize("token", ["\udce9\udcff", "eyJ\udcc3(.x.y", "ab\x01cd", "é.é.é"])
async def test_tokens_that_are_not_ascii_are_401_not_500(gateway: Client, token: str) -> None:
    # Header bytes that are not UTF-8 reach handlers as surrogates (aiohttp's surrogateescape);
    # a raw socket sending them got a 500 from tests/e2e/test_hostile_http.py before.
    verifier = gateway.app[components_key].authenticator.verifier
    with pytest.raises(InvalidToken) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "token_malformed"


@pytest.mark.parametrize(
    ("key", "value", "status"),
    [
        ("revoked-session:{sid}", "1", 401),
        ("user-status:{sub}", "deleted", 401),
        ("user-status:{sub}", "banned", 403),
    ],
)
async def test_account_state_in_redis_is_enforced_at_once(
    gateway: Client,
    mint: TokenMint,
    redis_client: aioredis.Redis,
    key: str,
    value: str,
    status: int,
) -> None:
    user_id, sid = uuid.uuid4(), str(uuid.uuid4())
    token = mint.mint(user_id, sid=sid)
    resp = await gateway.post(PROTECTED, json=BODY, headers=bearer(token))
    assert resp.status == 201  # the token is now in the verified-token cache
    prefix = gateway.app[components_key].settings.redis_prefix
    await redis_client.set(prefix + key.format(sid=sid, sub=user_id), value)
    resp = await gateway.post(PROTECTED, json=BODY, headers=bearer(token))
    assert resp.status == status
    if status == 403:
        await redis_client.delete(prefix + key.format(sid=sid, sub=user_id))  # unban
        resp = await gateway.post(PROTECTED, json=BODY, headers=bearer(token))
        assert resp.status == 201


async def test_es256_tokens_verify(
    make_gateway: MakeGateway, mint: TokenMint, upstream: Upstream
) -> None:
    es_key = SigningKey.es256("test-es256-1")
    upstream.jwks.append(es_key.jwk())
    try:
        client = await make_gateway(wait_kafka=False, jwks_min_refresh_s=0)
        resp = await client.post(PROTECTED, json=BODY, headers=bearer(mint.mint(key=es_key)))
        assert resp.status == 201, await resp.text()
    finally:
        upstream.jwks.remove(es_key.jwk())


async def test_rotated_key_is_fetched_on_first_use(
    make_gateway: MakeGateway, mint: TokenMint, upstream: Upstream
) -> None:
    client = await make_gateway(wait_kafka=False, jwks_min_refresh_s=0)
    await client.app[components_key].jwks.refresh()
    new_key = SigningKey.ed25519(f"rotated-{uuid.uuid4().hex[:6]}")
    upstream.jwks.append(new_key.jwk())
    try:
        resp = await client.post(PROTECTED, json=BODY, headers=bearer(mint.mint(key=new_key)))
        assert resp.status == 201
        # The old key still verifies during the overlap.
        resp = await client.post(PROTECTED, json=BODY, headers=bearer(mint.mint()))
        assert resp.status == 201
    finally:
        upstream.jwks.pop()


async def test_unknown_kids_cannot_flood_the_auth_service(
    make_gateway: MakeGateway, mint: TokenMint, upstream: Upstream
) -> None:
    client = await make_gateway(wait_kafka=False, jwks_min_refresh_s=60)
    await client.app[components_key].jwks.refresh()
    hits = upstream.jwks_hits
    tokens = [mint.mint(key=SigningKey.ed25519(f"made-up-{i}")) for i in range(20)]
    statuses = await asyncio.gather(
        *(client.post(PROTECTED, json=BODY, headers=bearer(t)) for t in tokens)
    )
    assert {r.status for r in statuses} == {401}
    assert upstream.jwks_hits == hits  # refreshed moments ago: no refetch within 60 s


async def test_key_removed_from_jwks_stops_verifying_even_cached_tokens(
    make_gateway: MakeGateway, mint: TokenMint, upstream: Upstream
) -> None:
    extra = SigningKey.ed25519(f"leaving-{uuid.uuid4().hex[:6]}")
    upstream.jwks.append(extra.jwk())
    client = await make_gateway(wait_kafka=False, jwks_min_refresh_s=0)
    token = mint.mint(key=extra)
    try:
        resp = await client.post(PROTECTED, json=BODY, headers=bearer(token))
        assert resp.status == 201
    finally:
        upstream.jwks.pop()
    await client.app[components_key].jwks.refresh()
    resp = await client.post(PROTECTED, json=BODY, headers=bearer(token))
    assert resp.status == 401


async def test_cached_token_never_outlives_exp(make_gateway: MakeGateway, mint: TokenMint) -> None:
    client = await make_gateway(wait_kafka=False, jwt_leeway_s=0)
    now = time.time()
    exp = int(now) + 2
    token = mint.mint(iat=int(now), nbf=int(now), exp=exp)
    resp = await client.post(PROTECTED, json=BODY, headers=bearer(token))
    assert resp.status == 201
    await asyncio.sleep(exp - time.time() + 0.05)  # the token's own clock is the event
    resp = await client.post(PROTECTED, json=BODY, headers=bearer(token))
    assert resp.status == 401
    assert "expired" in (await resp.json(content_type=None))["detail"]
