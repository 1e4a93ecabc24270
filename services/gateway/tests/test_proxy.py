"""The reverse proxy against a real upstream server: headers, auth, failures, WebSocket piping."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import uuid

import aiohttp
import pytest

from common.health import registry_key
from services.gateway.tests.support import Client, MakeGateway, TokenMint, Upstream, bearer

SPOOFED = {"X-Scoreboard-User-Id": str(uuid.uuid4()), "X-Forwarded-For": "6.6.6.6"}


async def test_auth_requests_reach_auth_with_forwarding_headers(
    gateway: Client, upstream: Upstream
) -> None:
    creds = {"username": "ada", "password": "correct horse"}
    resp = await gateway.post(
        "/api/auth/login", json=creds, headers={**SPOOFED, "X-Request-ID": "req-123"}
    )
    assert resp.status == 200
    assert (await resp.json())["token_type"] == "Bearer"
    seen = upstream.last("/api/auth/login")
    assert json.loads(seen.body) == creds
    assert seen.headers["X-Forwarded-For"] == "127.0.0.1"  # the real peer, not the spoof
    assert seen.headers["X-Request-ID"] == "req-123"
    assert "X-Scoreboard-User-Id" not in seen.headers


async def test_logout_forwards_the_bearer_token_and_relays_204(
    gateway: Client, upstream: Upstream
) -> None:
    resp = await gateway.post("/api/auth/logout", headers=bearer("the-token"))
    assert resp.status == 204
    assert upstream.last("/api/auth/logout").headers["Authorization"] == "Bearer the-token"


async def test_upstream_errors_are_relayed_as_they_are(gateway: Client) -> None:
    resp = await gateway.post("/api/auth/nothing-here", json={})
    assert resp.status == 404
    assert resp.content_type == "application/problem+json"


@pytest.mark.parametrize(
    "path", ["/api/auth/../admin", "/api/auth/a%2F..%2Fb", "/api/auth/.env", "/api/auth/"]
)
async def test_odd_paths_are_not_forwarded(gateway: Client, upstream: Upstream, path: str) -> None:
    before = len(upstream.requests)
    resp = await gateway.get(path)
    assert resp.status == 404
    assert len(upstream.requests) == before


async def test_board_reads_strip_spoofed_identity(
    gateway: Client, upstream: Upstream, mint: TokenMint
) -> None:
    resp = await gateway.get(
        "/api/scoreboard/top?limit=5", headers={**SPOOFED, **bearer(mint.mint())}
    )
    assert resp.status == 200
    assert (await resp.json())["version"] == 7
    assert resp.headers["Cache-Control"] == "no-cache"
    seen = upstream.last("/api/scoreboard/top")
    assert seen.path_qs == "/api/scoreboard/top?limit=5"
    assert "X-Scoreboard-User-Id" not in seen.headers
    assert "Authorization" not in seen.headers
    user_id = str(uuid.uuid4())
    resp = await gateway.get(f"/api/scoreboard/users/{user_id}")
    assert (await resp.json())["user_id"] == user_id


async def test_me_needs_a_token_and_passes_only_the_verified_user(
    gateway: Client, upstream: Upstream, mint: TokenMint
) -> None:
    before = len(upstream.requests)
    resp = await gateway.get("/api/scoreboard/me", headers=SPOOFED)
    assert resp.status == 401
    assert len(upstream.requests) == before  # never reached the broadcaster
    user_id = uuid.uuid4()
    resp = await gateway.get(
        "/api/scoreboard/me", headers={**SPOOFED, **bearer(mint.mint(user_id))}
    )
    assert resp.status == 200
    assert (await resp.json())["user_id"] == str(user_id)
    assert upstream.last("/api/scoreboard/me").headers["X-Scoreboard-User-Id"] == str(user_id)


async def test_unreachable_upstreams_are_503(
    make_gateway: MakeGateway, unused_tcp_port: int
) -> None:
    down = f"http://127.0.0.1:{unused_tcp_port}"
    client = await make_gateway(wait_kafka=False, broadcaster_url=down)
    upgrade = {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    for path, headers in (("/api/scoreboard/top", {}), ("/ws/scoreboard", upgrade)):
        resp = await client.get(path, headers=headers)
        assert resp.status == 503, path
        assert resp.content_type == "application/problem+json"
        assert resp.headers["Retry-After"] == "1"
    registry = client.app[registry_key]
    errors = registry.get_sample_value(
        "scoreboard_gateway_upstream_errors_total", {"upstream": "broadcaster"}
    )
    assert errors == 2


async def test_jwks_is_served_from_auth(gateway: Client, mint: TokenMint) -> None:
    resp = await gateway.get("/.well-known/jwks.json")
    assert resp.status == 200
    assert [k["kid"] for k in (await resp.json())["keys"]] == [mint.key.kid]


# WebSocket


async def _frame(ws: aiohttp.ClientWebSocketResponse) -> dict[str, object]:
    msg = await ws.receive(timeout=5)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame: dict[str, object] = json.loads(msg.data)
    return frame


async def test_anonymous_watchers_get_frames_both_ways(gateway: Client, upstream: Upstream) -> None:
    async with gateway.ws_connect("/ws/scoreboard", headers=SPOOFED) as ws:
        assert (await _frame(ws))["type"] == "top"
        await ws.send_str("hello")
        assert await _frame(ws) == {"type": "echo", "data": "hello"}
    assert "X-Scoreboard-User-Id" not in upstream.ws_headers[-1]


async def test_players_authenticate_with_the_query_or_the_bearer_subprotocol(
    gateway: Client, upstream: Upstream, mint: TokenMint
) -> None:
    user_id = uuid.uuid4()
    token = mint.mint(user_id)
    async with gateway.ws_connect(f"/ws/scoreboard?access_token={token}") as ws:
        assert (await _frame(ws))["type"] == "top"
        assert (await _frame(ws))["u"] == str(user_id)
    assert upstream.ws_headers[-1]["X-Scoreboard-User-Id"] == str(user_id)
    async with gateway.ws_connect("/ws/scoreboard", protocols=("bearer", token)) as ws:
        assert ws.protocol == "bearer"
        assert (await _frame(ws))["type"] == "top"
        assert (await _frame(ws))["u"] == str(user_id)


@pytest.mark.parametrize("how", ["query", "subprotocol", "header"])
async def test_a_bad_token_is_401_before_the_upgrade(
    gateway: Client, upstream: Upstream, how: str
) -> None:
    connections = len(upstream.ws_headers)
    forged = "forged.token.here"
    attempts = {
        "query": lambda: gateway.ws_connect(f"/ws/scoreboard?access_token={forged}"),
        "subprotocol": lambda: gateway.ws_connect("/ws/scoreboard", protocols=("bearer", forged)),
        "header": lambda: gateway.ws_connect("/ws/scoreboard", headers=bearer(forged)),
    }
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await attempts[how]()
    assert caught.value.status == 401
    assert len(upstream.ws_headers) == connections


async def test_upstream_close_codes_reach_the_client(gateway: Client) -> None:
    async with gateway.ws_connect("/ws/scoreboard") as ws:
        await _frame(ws)
        await ws.send_str("close:4008")
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert (msg.data, msg.extra) == (4008, "upstream says bye")


async def test_client_close_codes_reach_the_upstream(gateway: Client, upstream: Upstream) -> None:
    request_id = uuid.uuid4().hex
    ws = await gateway.ws_connect("/ws/scoreboard", headers={"X-Request-ID": request_id})
    await _frame(ws)
    await ws.close(code=4001, message=b"leaving")
    assert await asyncio.wait_for(upstream.ws_closed(request_id), 5) == 4001


async def _raw_handshake(
    client: Client, request_id: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket client that will stop reading after the handshake."""
    port = client.server.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws/scoreboard HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"X-Request-ID: {request_id}\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101")
    return reader, writer


def _masked_text(text: str) -> bytes:
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return struct.pack("!BB", 0x81, 0x80 | len(payload)) + mask + masked


async def test_a_client_that_stops_reading_is_dropped(
    make_gateway: MakeGateway, upstream: Upstream
) -> None:
    client = await make_gateway(wait_kafka=False, ws_send_timeout_s=0.5)
    request_id = uuid.uuid4().hex
    reader, writer = await _raw_handshake(client, request_id)
    try:
        writer.write(_masked_text("flood:300"))  # ~18 MB the client never reads
        await writer.drain()
        # The gateway gives up on the client and leaves the broadcaster with "going away".
        assert await asyncio.wait_for(upstream.ws_closed(request_id), 20) == 1001
        async with asyncio.timeout(10):  # then it drops the client's connection
            while await reader.read(1 << 20):
                pass
        registry = client.app[registry_key]
        assert registry.get_sample_value("scoreboard_gateway_ws_connections") == 0
    finally:
        writer.close()


async def test_more_watchers_than_a_connection_pool_holds(make_gateway: MakeGateway) -> None:
    # Each proxied WebSocket keeps its upstream connection open; 150 live watchers must not
    # queue behind the per-host limit (100) of the pool used for ordinary proxied requests.
    # (All from one address here, so the per-address WebSocket limits are lifted.)
    gateway = await make_gateway(
        wait_kafka=False, ws_max_per_address=1000, ws_connect_burst_per_address=1000
    )
    watchers = 150
    url = gateway.make_url("/ws/scoreboard")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sockets = await asyncio.wait_for(
            asyncio.gather(*(session.ws_connect(url) for _ in range(watchers))), 20
        )
        try:
            firsts = await asyncio.wait_for(asyncio.gather(*(_frame(ws) for ws in sockets)), 20)
            assert [f["type"] for f in firsts] == ["top"] * watchers
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets))


@pytest.mark.parametrize(
    "path",
    [
        "/api/boards",
        "/api/boards/global/daily/top?limit=1000&period=2026-12-02&cursor=YzE",
        "/api/boards/global/weekly/users?ids=a,b",
        f"/api/boards/global/monthly/users/{uuid.uuid4()}",
        f"/api/boards/global/season/around/{uuid.uuid4()}?n=5",
        "/api/boards/NOPE/hourly/top",  # the broadcaster answers 404/400 about the values
    ],
)
async def test_board_reads_reach_the_broadcaster_without_identity(
    gateway: Client, upstream: Upstream, mint: TokenMint, path: str
) -> None:
    resp = await gateway.get(path, headers={**SPOOFED, **bearer(mint.mint())})
    assert resp.status == 200
    body = await resp.json()
    assert body == {"path": path, "user_id": None}


@pytest.mark.parametrize("kind", ["users", "around"])
async def test_board_me_needs_a_token_and_passes_the_verified_user(
    gateway: Client, upstream: Upstream, mint: TokenMint, kind: str
) -> None:
    before = len(upstream.requests)
    resp = await gateway.get(f"/api/boards/global/daily/{kind}/me", headers=SPOOFED)
    assert resp.status == 401
    assert len(upstream.requests) == before
    user_id = uuid.uuid4()
    resp = await gateway.get(
        f"/api/boards/global/daily/{kind}/me?n=2", headers={**SPOOFED, **bearer(mint.mint(user_id))}
    )
    assert resp.status == 200
    assert (await resp.json())["user_id"] == str(user_id)
