"""The whole public surface against hostile input: a client error every time, never a 5xx.

The real gateway, auth, score and broadcaster processes (tests/e2e/conftest.py ``edge_system``),
real sockets. The routes are docs/openapi.yaml's paths (``/ws/scoreboard`` and auth's routes
as the gateway proxies them included), so a route added to the document is attacked here too.
Every case is printed with its answer (``-s``): the closing note of issue 13 lists them.

The unit tests of each defence sit with its module: libs/common/tests/test_web.py (strict JSON,
405 with ``Allow``, 408), services/gateway/tests/test_ws_admission.py (upgrade headers).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from tests.e2e.conftest import EDGE_BODY_TIMEOUT_S, EDGE_KEEPALIVE_S
from tests.e2e.harness import Player, System, register_and_login

pytestmark = pytest.mark.integration

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
SAMPLES = {
    "{user_id}": str(uuid.uuid4()),
    "{path}": "app.js",
    "{board}": "global",
    "{window}": "all-time",
}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "PROPFIND")
# aiohttp lingers up to 10 s after answering a request whose body has not all arrived (so the
# client reads the answer rather than a reset), then closes: the cut-off's upper bound.
LINGER_S = 10.0
SLACK_S = 2.0

JSON = "application/json"
# (name, body, content type): each must get a 4xx from every route that reads a body.
HOSTILE_BODIES: list[tuple[str, bytes, str | None]] = [
    ("15,000 nested arrays", b"[" * 15_000, JSON),
    ("33 nested objects", b'{"a":' * 33 + b"1" + b"}" * 33, JSON),
    ("nesting in a field", b'{"action_type": ' + b"[" * 40 + b"]" * 40 + b"}", JSON),
    ("5,000-digit integer", b'{"action_type": 1' + b"0" * 5_000 + b"}", JSON),
    ("1e999999 (infinity)", b'{"points": 1e999999, "action_type": "tap"}', JSON),
    ("NaN literal", b'{"points": NaN, "action_type": "tap"}', JSON),
    ("invalid UTF-8", b'{"username": "\xff\xfe", "password": "\xc3\x28xxxxxxx"}', JSON),
    ("UTF-16 body", '{"username": "abc"}'.encode("utf-16"), JSON),
    ("lone surrogate", b'{"username": "\\ud800abc", "password": "\\udfffxxxxxxxx"}', JSON),
    ("NUL in strings", b'{"username": "a\\u0000b", "action_type": "\\u0000"}', JSON),
    ("duplicate keys", b'{"username": "a", "username": "b", "action_type": "tap"}', JSON),
    ("not an object", b'["action_type", "tap"]', JSON),
    ("a bare string", b'"tap"', JSON),
    ("empty body", b"", JSON),
    ("truncated JSON", b'{"username": "ab', JSON),
    ("20 KiB body", b'{"username": "' + b"a" * 20_000 + b'"}', JSON),
    ("wrong types", b'{"username": 1, "password": [], "action_type": {}, "action_id": 7}', JSON),
    ("text/plain", b'{"username": "abc"}', "text/plain"),
    ("form-encoded", b"username=abc&password=xxxxxxxx", "application/x-www-form-urlencoded"),
    (
        "multipart",
        b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--\r\n",
        "multipart/form-data; boundary=b",
    ),
    ("no content type", b'{"username": "abc"}', None),
    ("garbage content type", b'{"username": "abc"}', ';;=;/"x'),
    ("JSON in latin-1", '{"username": "é"}'.encode("latin-1"), "application/json; charset=latin-1"),
]


def _documented() -> dict[str, set[str]]:
    """Each documented path, made concrete, and its methods (HEAD wherever GET is)."""
    doc = yaml.safe_load(DOC.read_text())
    routes: dict[str, set[str]] = {}
    for template, operations in doc["paths"].items():
        path = template
        for name, value in SAMPLES.items():
            path = path.replace(name, value)
        assert "{" not in path, f"no sample value for a parameter of {template}"
        methods = {m.upper() for m in operations}
        routes[path] = methods | ({"HEAD"} if "GET" in methods else set())
    return routes


ROUTES = _documented()
BODY_ROUTES = sorted(p for p, m in ROUTES.items() if "POST" in m)
SECURED = {"/api/actions", "/api/scoreboard/update", "/api/scoreboard/me", "/api/auth/logout"}


class Tally:
    """Every case and its answer, printed at the end (the issue's closing note lists them)."""

    def __init__(self) -> None:
        self.answers: dict[str, Counter[int]] = {}

    def record(self, case: str, status: int) -> None:
        self.answers.setdefault(case, Counter())[status] += 1

    def report(self, title: str) -> None:
        print(f"\n{title}")
        for case, statuses in self.answers.items():
            print(f"  {case:<40} {dict(sorted(statuses.items()))}")


@pytest.fixture(scope="module")
def gateway(edge_system: System) -> str:
    """The public origin."""
    return edge_system.gateway


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that sends what it is given (no cookie jar, no retries)."""
    async with aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30), cookie_jar=aiohttp.DummyCookieJar()
    ) as session:
        yield session


@pytest.fixture
async def player(http: aiohttp.ClientSession, gateway: str) -> Player:
    """A real account, registered and logged in through the gateway."""
    return await register_and_login(http, gateway, f"hostile_{uuid.uuid4().hex[:10]}")


def test_the_surface_is_the_documented_one() -> None:
    """The sweep below covers what the issue names (a typo in the document would shrink it)."""
    assert {
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/logout",
        "/ws/scoreboard",
        "/api/scoreboard/update",
        "/api/actions",
    } <= ROUTES.keys()
    assert len(ROUTES) >= 16


async def test_every_method_on_every_route_is_served_or_405_with_allow(
    http: aiohttp.ClientSession, gateway: str, player: Player
) -> None:
    tally = Tally()
    for path, allowed in ROUTES.items():
        for method in METHODS:
            headers = player.auth if path != "/api/auth/logout" else {}
            async with http.request(method, gateway + path, headers=headers) as resp:
                await resp.read()
                tally.record(f"{method} {path}", resp.status)
                if method in allowed:
                    assert resp.status < 500, f"{method} {path}: {resp.status}"
                    continue
                assert resp.status == 405, f"{method} {path}: {resp.status}"
                assert resp.content_type == "application/problem+json", f"{method} {path}"
                allow = {m.strip() for m in resp.headers.get("Allow", "").split(",")}
                assert allow == allowed, f"{method} {path}: Allow {allow}, documented {allowed}"
                assert resp.headers["Server"] == "scoreboard"
    tally.report("every method on every route")


async def test_hostile_bodies_get_a_client_error_on_every_route(
    http: aiohttp.ClientSession, gateway: str, player: Player
) -> None:
    tally = Tally()
    for name, body, ctype in HOSTILE_BODIES:
        headers = {"Content-Type": ctype} if ctype is not None else {}
        for path, allowed in ROUTES.items():
            for method in sorted(allowed - {"HEAD"}):
                # The token makes the secured routes read the body; logout's would end the session.
                auth = player.auth if path in SECURED - {"/api/auth/logout"} else {}
                async with http.request(
                    method,
                    gateway + path,
                    data=body,
                    headers={**headers, **auth},
                    skip_auto_headers=() if ctype is not None else ("Content-Type",),
                ) as resp:
                    await resp.read()
                    tally.record(
                        f"{name} ({'body' if method == 'POST' else 'no body'})", resp.status
                    )
                    assert resp.status < 500, f"{name}: {method} {path}: {resp.status}"
                    if method == "POST" and path != "/api/auth/logout":
                        assert 400 <= resp.status < 500, f"{name}: {path}: {resp.status}"
                        assert resp.content_type == "application/problem+json"
    tally.report("hostile bodies")


def _request(
    method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: scoreboard.test"]
    lines += [name + b": " + value for name, value in headers]
    if body and not any(n.lower() in (b"content-length", b"transfer-encoding") for n, _ in headers):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def _raw(port: int, data: bytes) -> int:
    """Send raw bytes, return the answer's status (0: closed without an answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        return int(line.split()[1]) if line.startswith(b"HTTP/1.") else 0
    finally:
        writer.close()


def _header_attacks(token: str) -> Iterator[tuple[str, bytes, str]]:
    """(name, raw request to each route, what is expected: '4xx' or '<500')."""
    big = b"a" * 9_000
    yield "a 9,000-byte header value", _request("GET", "{path}", [(b"X-Big", big)]), "4xx"
    yield "a 9,000-byte header name", _request("GET", "{path}", [(big, b"1")]), "4xx"
    many = [(f"X-H{i}".encode(), b"1") for i in range(200)]
    yield "200 headers", _request("GET", "{path}", many), "4xx"
    yield "a 9,000-byte URL", _request("GET", "{path}?" + "q" * 9_000, []), "4xx"
    yield (
        "a 8,000-byte Authorization",
        _request("GET", "{path}", [(b"Authorization", b"Bearer " + b"x" * 8_000)]),
        "<500",
    )
    yield "non-ASCII header bytes", _request("GET", "{path}", [(b"X-Foo", "€ü".encode())]), "<500"
    yield (
        "latin-1 Authorization",
        _request("GET", "{path}", [(b"Authorization", b"Bearer \xe9\xff")]),
        "<500",
    )
    yield (
        "a token with a control char",
        _request("GET", "{path}", [(b"Authorization", f"Bearer {token[:20]}\x01".encode())]),
        "<500",
    )
    yield (
        "Basic credentials",
        _request("GET", "{path}", [(b"Authorization", b"Basic YTpi")]),
        "<500",
    )
    yield (
        "garbage X-Forwarded-For",
        _request("GET", "{path}", [(b"X-Forwarded-For", b"999.1.1.1, ::g, \xff")]),
        "<500",
    )
    yield (
        "a hostile X-Request-ID",
        _request("GET", "{path}", [(b"X-Request-ID", b"\x7f" * 500)]),
        "<500",
    )
    yield (
        "Content-Length: abc",
        _request("POST", "{path}", [(b"Content-Length", b"abc")], b"{}"),
        "4xx",
    )
    yield "Content-Length: -1", _request("POST", "{path}", [(b"Content-Length", b"-1")]), "4xx"
    yield (
        "two Content-Lengths",
        _request("POST", "{path}", [(b"Content-Length", b"2"), (b"Content-Length", b"3")], b"{}"),
        "4xx",
    )
    yield (
        "Content-Length with chunked",
        _request(
            "POST",
            "{path}",
            [(b"Content-Length", b"2"), (b"Transfer-Encoding", b"chunked")],
            b"0\r\n\r\n",
        ),
        "4xx",
    )
    yield (
        "a 20 KiB chunked body",
        _request(
            "POST",
            "{path}",
            [(b"Transfer-Encoding", b"chunked"), (b"Content-Type", b"application/json")],
            b"5000\r\n" + b"[" * 0x5000 + b"\r\n0\r\n\r\n",
        ),
        "4xx",
    )
    yield (
        "a bad chunk size",
        _request("POST", "{path}", [(b"Transfer-Encoding", b"chunked")], b"zz\r\n{}\r\n0\r\n\r\n"),
        "4xx",
    )
    yield (
        "Transfer-Encoding: gzip",
        _request("POST", "{path}", [(b"Transfer-Encoding", b"gzip")], b"{}"),
        "4xx",
    )
    yield (
        "Content-Encoding: gzip (not gzip)",
        _request(
            "POST",
            "{path}",
            [(b"Content-Encoding", b"gzip"), (b"Content-Type", b"application/json")],
            b"{}",
        ),
        "<500",
    )
    yield "a percent-encoded NUL in the path", _request("GET", "{path}%00", []), "<500"
    yield "an encoded slash in the path", _request("GET", "{path}%2F..%2F", []), "<500"
    yield (
        "invalid UTF-8 in the query",
        _request("GET", "{path}?limit=%FF%FE&access_token=%C3%28", []),
        "<500",
    )
    yield "a huge limit", _request("GET", "{path}?limit=99999999999999999999999", []), "<500"


async def test_hostile_headers_and_framing_get_a_client_error(gateway: str, player: Player) -> None:
    port = urlsplit(gateway).port
    assert port is not None
    tally = Tally()
    for name, template, expected in _header_attacks(player.access_token):
        for path in ROUTES:
            status = await _raw(port, template.replace(b"{path}", path.encode()))
            tally.record(name, status)
            assert 0 < status < 500, f"{name}: {path}: {status}"
            if expected == "4xx":
                assert status >= 400, f"{name}: {path}: {status}"
    for version in (b"HTTP/9.9", b"HTTP/1.1x", b"FOO"):
        status = await _raw(port, b"GET /api/actions/types " + version + b"\r\nHost: x\r\n\r\n")
        tally.record(f"request line ending {version.decode()}", status)
        assert 400 <= status < 500, f"{version!r}: {status}"
    tally.report("hostile headers and framing")


async def _trickle(
    port: int, first: bytes, drip: bytes, *, every_s: float = 0.1, for_s: float = 30.0
) -> dict[str, Any]:
    """Send ``first``, then ``drip`` a byte at a time; return when the server answered (if it
    did) and when it closed the connection, in seconds from the start."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    outcome: dict[str, Any] = {"answered": None, "status": None, "closed": None}

    async def send() -> None:
        writer.write(first)
        for i in range(int(for_s / every_s)):
            await asyncio.sleep(every_s)
            writer.write(drip[i % len(drip) : i % len(drip) + 1])
            await writer.drain()

    sending = asyncio.create_task(send())
    try:
        while time.monotonic() - start < for_s:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), for_s)
            except (ConnectionError, TimeoutError):
                break
            if not chunk:
                break
            if outcome["answered"] is None and chunk.startswith(b"HTTP/1."):
                outcome["answered"] = time.monotonic() - start
                outcome["status"] = int(chunk.split()[1])
        outcome["closed"] = time.monotonic() - start
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
        writer.close()
    return outcome


async def test_slow_clients_are_cut_off_within_a_bound(gateway: str, player: Player) -> None:
    port = urlsplit(gateway).port
    assert port is not None
    auth = f"Authorization: Bearer {player.access_token}\r\n".encode()
    body_head = b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    header_cases = {
        "silent connection": (b"", b"\0", 0.0),
        "request line a byte at a time": (b"", b"GET /api/scoreboard/top?limit=10", 0.1),
        "headers a byte at a time": (b"GET /api/actions/types HTTP/1.1\r\n", b"X-Slow: aaaa", 0.1),
        "WebSocket upgrade a byte at a time": (
            b"GET /ws/scoreboard HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n",
            b"X-Slow: aaaa",
            0.1,
        ),
    }
    body_cases = {
        "register body a byte at a time": b"POST /api/auth/register HTTP/1.1\r\nHost: x\r\n",
        "update body a byte at a time": b"POST /api/scoreboard/update HTTP/1.1\r\nHost: x\r\n"
        + auth,
        "ticket body a byte at a time": b"POST /api/actions HTTP/1.1\r\nHost: x\r\n" + auth,
    }
    header_runs = [
        _trickle(port, first, drip, every_s=every or 30.0)
        for first, drip, every in header_cases.values()
    ]
    body_runs = [_trickle(port, head + body_head, b" ") for head in body_cases.values()]
    results = await asyncio.gather(*header_runs, *body_runs)
    print("\nslow clients (seconds from connect)")
    for name, outcome in zip([*header_cases, *body_cases], results, strict=True):
        print(f"  {name:<40} {outcome}")
    for name, outcome in zip(header_cases, results[: len(header_cases)], strict=True):
        assert outcome["closed"] < EDGE_KEEPALIVE_S + SLACK_S, (name, outcome)
        assert outcome["status"] is None or 400 <= outcome["status"] < 500, (name, outcome)
    for name, outcome in zip(body_cases, results[len(header_cases) :], strict=True):
        assert outcome["status"] == 408, (name, outcome)
        assert outcome["answered"] < EDGE_BODY_TIMEOUT_S + SLACK_S, (name, outcome)
        assert outcome["closed"] < EDGE_BODY_TIMEOUT_S + LINGER_S + SLACK_S, (name, outcome)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{gateway}/api/actions/types") as resp,
    ):
        assert resp.status == 200  # and the gateway still serves everyone else
