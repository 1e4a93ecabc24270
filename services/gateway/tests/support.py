"""Test support: signing keys and token minting, and a small real upstream server.

The upstream is a real aiohttp server standing in for auth (JWKS and /api/auth/*) and the
broadcaster (board reads, /me and the WebSocket), so the gateway is tested over real HTTP and
WebSocket connections without depending on the other services' code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from common.events import Topics
from common.settings import CommonSettings
from testkit.env import TestEnv

Client = TestClient[web.Request, web.Application]
MakeGateway = Callable[..., Awaitable[Client]]

ISSUER = CommonSettings.model_fields["jwt_issuer"].default
AUDIENCE = CommonSettings.model_fields["jwt_audience"].default


def b64url(data: bytes) -> str:
    """Base64url without padding (JWS encoding)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A compact JWS assembled by hand (for tokens no honest library would sign)."""
    head = b64url(json.dumps(header).encode())
    body = b64url(json.dumps(payload).encode())
    return f"{head}.{body}.{b64url(signature)}"


@dataclass(frozen=True)
class SigningKey:
    """A private key, its kid and algorithm, and its public JWK."""

    kid: str
    alg: str
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

    @classmethod
    def ed25519(cls, kid: str) -> SigningKey:
        """A fresh Ed25519 key (EdDSA)."""
        return cls(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())

    @classmethod
    def es256(cls, kid: str) -> SigningKey:
        """A fresh P-256 key (ES256)."""
        return cls(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))

    def jwk(self) -> dict[str, Any]:
        """The public JWK as auth publishes it."""
        algo = jwt.get_algorithm_by_name(self.alg)
        data: dict[str, Any] = json.loads(algo.to_jwk(self.private.public_key()))
        data.update(kid=self.kid, use="sig", alg=self.alg)
        return data


class TokenMint:
    """Mints access tokens shaped like auth's (claims per the shared brief)."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def claims(self, user_id: uuid.UUID | None = None, **overrides: Any) -> dict[str, Any]:
        """Valid claims for ``user_id`` (a fresh one if None), with ``overrides``."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user_id or uuid.uuid4()),
            "name": "player",
            "roles": ["player"],
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": uuid.uuid4().hex,
            "sid": str(uuid.uuid4()),
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        user_id: uuid.UUID | None = None,
        *,
        key: SigningKey | None = None,
        **overrides: Any,
    ) -> str:
        """A signed token (``overrides`` set to None drop a claim)."""
        signer = key or self.key
        return jwt.encode(
            self.claims(user_id, **overrides),
            signer.private,
            algorithm=signer.alg,
            headers={"kid": signer.kid},
        )


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Recorded:
    """A request the upstream received."""

    method: str
    path_qs: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """The fake auth + broadcaster: a real HTTP/WebSocket server recording what reaches it."""

    jwks: list[dict[str, Any]]
    jwks_status: int = 200
    jwks_hits: int = 0
    requests: list[Recorded] = field(default_factory=list)
    ws_headers: list[dict[str, str]] = field(default_factory=list)
    ws_closes: dict[str, asyncio.Future[int | None]] = field(default_factory=dict)
    server: TestServer | None = None

    @property
    def url(self) -> str:
        """Base URL."""
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def ws_closed(self, request_id: str) -> asyncio.Future[int | None]:
        """Resolves to the close code the upstream got on the WebSocket of ``request_id``."""
        if request_id not in self.ws_closes:
            self.ws_closes[request_id] = asyncio.get_running_loop().create_future()
        return self.ws_closes[request_id]

    def last(self, path: str) -> Recorded:
        """The latest recorded request for ``path``."""
        return next(r for r in reversed(self.requests) if r.path_qs.split("?")[0] == path)

    def build(self) -> web.Application:
        """The upstream app."""
        app = web.Application()
        app.router.add_get("/.well-known/jwks.json", self._jwks)
        app.router.add_route("*", "/api/auth/{tail:.*}", self._auth)
        app.router.add_get("/api/scoreboard/top", self._top)
        app.router.add_get("/api/scoreboard/users/{user_id}", self._user)
        app.router.add_get("/api/scoreboard/me", self._me)
        app.router.add_get("/api/boards{tail:.*}", self._boards)
        app.router.add_get("/ws/scoreboard", self._ws)
        return app

    async def _boards(self, request: web.Request) -> web.Response:
        await self._record(request)
        return web.json_response(
            {"path": request.path_qs, "user_id": request.headers.get("X-Scoreboard-User-Id")}
        )

    async def _record(self, request: web.Request) -> None:
        self.requests.append(
            Recorded(request.method, request.path_qs, dict(request.headers), await request.read())
        )

    async def _jwks(self, request: web.Request) -> web.Response:
        self.jwks_hits += 1
        await self._record(request)
        if self.jwks_status != 200:
            return web.Response(status=self.jwks_status)
        return web.json_response({"keys": self.jwks}, headers={"Cache-Control": "max-age=60"})

    async def _auth(self, request: web.Request) -> web.Response:
        await self._record(request)
        tail = request.match_info["tail"]
        if tail == "register":
            body = await request.json()
            return web.json_response(
                {"user_id": str(uuid.uuid4()), "username": body.get("username")}, status=201
            )
        if tail in ("login", "refresh"):
            tokens = {
                "access_token": "a.b.c",
                "token_type": "Bearer",
                "expires_in": 900,
                "refresh_token": "r" * 43,
            }
            return web.json_response(tokens)
        if tail == "logout":
            return web.Response(status=204)
        return web.json_response(
            {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no route"},
            status=404,
            content_type="application/problem+json",
        )

    async def _top(self, request: web.Request) -> web.Response:
        await self._record(request)
        entry = {"rank": 1, "user_id": str(uuid.uuid4()), "username": "ada", "score": 50}
        return web.json_response(
            {"entries": [entry], "version": 7, "as_of": "2026-01-01T00:00:00Z"},
            headers={"Cache-Control": "no-cache"},
        )

    async def _user(self, request: web.Request) -> web.Response:
        await self._record(request)
        user_id = request.match_info["user_id"]
        return web.json_response({"user_id": user_id, "username": "ada", "score": 5, "rank": 2})

    async def _me(self, request: web.Request) -> web.Response:
        await self._record(request)
        user_id = request.headers.get("X-Scoreboard-User-Id")
        if user_id is None:
            return web.json_response(
                {"type": "about:blank", "title": "Unauthorized", "status": 401, "detail": "no"},
                status=401,
                content_type="application/problem+json",
            )
        return web.json_response({"user_id": user_id, "username": "me", "score": 9, "rank": 3})

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        self.ws_headers.append(dict(request.headers))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json({"type": "top", "version": 1, "entries": []})
        user_id = request.headers.get("X-Scoreboard-User-Id")
        if user_id:
            await ws.send_json({"type": "me", "version": 1, "score": 9, "rank": 3, "u": user_id})
        async for msg in ws:
            if msg.type is not WSMsgType.TEXT:
                continue
            command, _, arg = msg.data.partition(":")
            if command == "close":
                await ws.close(code=int(arg), message=b"upstream says bye")
            elif command == "flood":
                frame = "x" * 60_000
                for _ in range(int(arg)):
                    await ws.send_str(frame)
            else:
                await ws.send_json({"type": "echo", "data": msg.data})
        self.ws_closed(request.headers.get("X-Request-ID", "")).set_result(ws.close_code)
        return ws


def _event_id(value: bytes | None) -> object:
    """A command's CloudEvent id; None for anything else on the topic (other tests write there,
    e.g. the Kafka ACL tests' ``{}``)."""
    try:
        event = json.loads(value or b"")
    except ValueError:
        return None
    return event.get("id") if isinstance(event, dict) else None


async def command_records(
    env: TestEnv, action_id: str, *, wait: bool = True, timeout_s: float = 15.0
) -> list[ConsumerRecord]:
    """Every score command for ``action_id`` on this run's commands topic.

    Reads from the beginning to the end offsets of the moment; with ``wait`` it keeps reading
    until at least one is there.
    """
    topic = Topics(env.topic_prefix).commands
    # No group: the consumer is assigned every partition of the topic, from the beginning.
    consumer = AIOKafkaConsumer(
        topic,
        **env.kafka_auth().aiokafka(),
        bootstrap_servers=env.kafka_bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    )
    await consumer.start()
    try:
        partitions = sorted(consumer.assignment())
        assert partitions, f"no partitions for {topic}"
        end = await consumer.end_offsets(partitions)
        found: list[ConsumerRecord] = []
        async with asyncio.timeout(timeout_s):
            while True:
                batches = await consumer.getmany(timeout_ms=200)
                for records in batches.values():
                    found += [r for r in records if _event_id(r.value) == action_id]
                positions = [await consumer.position(tp) for tp in partitions]
                caught_up = all(
                    pos >= end[tp] for pos, tp in zip(positions, partitions, strict=True)
                )
                if caught_up and (found or not wait):
                    return found
    finally:
        await consumer.stop()


# A catalog of instant actions (and one that takes a minute), for the update path's tests.
CATALOG = {
    "tap": {"points": 1, "min_duration_ms": 0},
    "quest": {"points": 50, "min_duration_ms": 0},
    "slow": {"points": 5, "min_duration_ms": 60_000},
}
UPDATE = "/api/scoreboard/update"


class Player:
    """A token holder with helpers for the ticket flow."""

    def __init__(self, client: Client, mint: TokenMint) -> None:
        self.client = client
        self.user_id = uuid.uuid4()
        self.sid = str(uuid.uuid4())
        self.token = mint.mint(self.user_id, sid=self.sid)
        self.auth = bearer(self.token)

    async def ticket(self, action_type: str = "tap") -> dict[str, Any]:
        resp = await self.client.post(
            "/api/actions", json={"action_type": action_type}, headers=self.auth
        )
        assert resp.status == 201, await resp.text()
        ticket: dict[str, Any] = await resp.json()
        return ticket

    async def completion(self, action_type: str = "tap") -> dict[str, Any]:
        ticket = await self.ticket(action_type)
        return {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}

    async def submit(
        self, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, Any]]:
        resp = await self.client.post(UPDATE, json=body, headers={**self.auth, **(headers or {})})
        return resp.status, await resp.json(content_type=None)
