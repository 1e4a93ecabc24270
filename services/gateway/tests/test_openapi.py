"""docs/openapi.yaml against real responses of the app (and the app's routes against the doc).

Every exchange below is a real request to the in-process gateway (backed by real Redis and Kafka,
and by the real upstream test server for proxied paths); the request and the response are then
validated with openapi-core: status documented, body schema, content type, required headers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import redis.asyncio as aioredis
import yaml
from aiohttp.test_utils import make_mocked_request
from openapi_core import Config, OpenAPI
from openapi_core.exceptions import OpenAPIError
from openapi_core.testing import MockRequest, MockResponse

from gateway.components import components_key
from services.gateway.tests.support import (
    Client,
    MakeGateway,
    TokenMint,
    bearer,
    command_records,
)
from testkit.env import TestEnv as SliceEnv

DOC = Path(__file__).resolve().parents[3] / "docs" / "openapi.yaml"
CATALOG = {"tap": {"points": 1, "min_duration_ms": 0, "max_open": 10}}


def _json_loads(value: bytes | str, **_params: str) -> Any:
    return json.loads(value)


@pytest.fixture(scope="module")
def spec() -> OpenAPI:
    """The document (openapi-core validates it against the OpenAPI 3.1 schema on load)."""
    problem_json: dict[str, Callable[[bytes], Any]] = {"application/problem+json": _json_loads}
    config = Config(extra_media_type_deserializers=problem_json)
    return OpenAPI.from_file_path(str(DOC), config=config)


class Exchanges:
    """Sends requests through the app and validates each exchange against the document."""

    def __init__(self, client: Client, spec: OpenAPI) -> None:
        self.client = client
        self.spec = spec
        self.seen: list[tuple[str, str, int]] = []

    async def __call__(
        self,
        method: str,
        url: str,
        status: int,
        *,
        json_body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        validate_request: bool = True,
    ) -> Any:
        headers = dict(headers or {})
        body = raw if raw is not None else (None if json_body is None else json.dumps(json_body))
        if body is not None:
            headers.setdefault("Content-Type", "application/json")
        resp = await self.client.request(method, url, data=body, headers=headers)
        payload = await resp.read()
        assert resp.status == status, f"{method} {url}: {resp.status} {payload[:300]!r}"
        parts = urlsplit(url)
        request = MockRequest(
            "http://127.0.0.1:8080",
            method,
            parts.path,
            args=dict(parse_qsl(parts.query)),
            headers=headers,
            data=body.encode() if isinstance(body, str) else body,
            content_type=headers.get("Content-Type", "application/json"),
        )
        response = MockResponse(
            payload,
            status_code=resp.status,
            headers=dict(resp.headers),
            content_type=resp.headers.get("Content-Type", ""),
        )
        if validate_request:
            self.spec.validate_request(request)
        self.spec.validate_response(request, response)
        self.seen.append((method, parts.path, status))
        return json.loads(payload) if resp.content_type.endswith("json") and payload else None


async def test_account_paths_conform(gateway: Client, spec: OpenAPI, mint: TokenMint) -> None:
    check = Exchanges(gateway, spec)
    creds = {"username": "ada_lovelace", "password": "correct horse"}
    await check("POST", "/api/auth/register", 201, json_body=creds)
    await check("POST", "/api/auth/login", 200, json_body=creds)
    await check("POST", "/api/auth/refresh", 200, json_body={"refresh_token": "r" * 43})
    await check("POST", "/api/auth/logout", 204, headers=bearer(mint.mint()))
    await check("GET", "/.well-known/jwks.json", 200)


async def test_action_paths_conform(
    make_gateway: MakeGateway, spec: OpenAPI, mint: TokenMint, unused_tcp_port: int
) -> None:
    client = await make_gateway(
        action_catalog=CATALOG, actions_rate_per_address=0.001, actions_burst_per_address=4
    )
    check = Exchanges(client, spec)
    token = mint.mint()
    await check("GET", "/api/actions/types", 200)
    ticket = await check(
        "POST", "/api/actions", 201, json_body={"action_type": "tap"}, headers=bearer(token)
    )
    body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
    await check(
        "POST",
        "/api/actions",
        400,
        json_body={"action_type": "nope"},  # not one of the document's catalog types
        headers=bearer(token),
        validate_request=False,
    )
    await check(
        "POST", "/api/actions", 401, json_body={"action_type": "tap"}, validate_request=False
    )
    await check(
        "POST",
        "/api/actions",
        413,
        json_body={"action_type": "x" * 20_000},
        headers=bearer(token),
        validate_request=False,
    )
    await check(
        "POST", "/api/actions", 201, json_body={"action_type": "tap"}, headers=bearer(token)
    )
    await check(
        "POST", "/api/actions", 429, json_body={"action_type": "tap"}, headers=bearer(token)
    )

    update = "/api/scoreboard/update"
    await check("POST", update, 401, json_body=body, validate_request=False)
    await check(
        "POST", update, 403, json_body={**body, "user_id": str(uuid.uuid4())}, headers=bearer(token)
    )
    await check("POST", update, 400, json_body={**body, "points": 99}, headers=bearer(token))
    await check("POST", update, 202, json_body=body, headers=bearer(token))
    await check("POST", update, 409, json_body=body, headers=bearer(token))

    broken = await make_gateway(
        wait_kafka=False,
        action_catalog=CATALOG,
        kafka_bootstrap=f"127.0.0.1:{unused_tcp_port}",
    )
    other = Exchanges(broken, spec)
    fresh = await other(
        "POST", "/api/actions", 201, json_body={"action_type": "tap"}, headers=bearer(token)
    )
    retry = {k: fresh[k] for k in ("action_id", "action_type", "action_hash")}
    await other("POST", update, 503, json_body=retry, headers=bearer(token))
    await other("GET", "/readyz", 503)


async def test_applied_update_conforms(
    gateway: Client,
    spec: OpenAPI,
    mint: TokenMint,
    test_env: SliceEnv,
    redis_client: aioredis.Redis,
) -> None:
    check = Exchanges(gateway, spec)
    user_id = uuid.uuid4()
    token = mint.mint(user_id)
    ticket = await check(
        "POST", "/api/actions", 201, json_body={"action_type": "daily_login"}, headers=bearer(token)
    )
    body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
    waiting = asyncio.create_task(
        check(
            "POST",
            "/api/scoreboard/update",
            200,
            json_body=body,
            headers={**bearer(token), "Prefer": "wait=5"},
        )
    )
    await command_records(test_env, body["action_id"])
    notice = {
        "action_id": body["action_id"],
        "user_id": str(user_id),
        "username": "player",
        "score": 10,
        "version": 1,
        "rank": 1,
    }
    prefix = gateway.app[components_key].settings.redis_prefix
    await redis_client.publish(f"{prefix}applied", json.dumps(notice))
    assert (await waiting)["status"] == "applied"


async def test_board_and_operations_paths_conform(
    gateway: Client,
    make_gateway: MakeGateway,
    spec: OpenAPI,
    mint: TokenMint,
    unused_tcp_port: int,
) -> None:
    check = Exchanges(gateway, spec)
    await check("GET", "/api/scoreboard/top?limit=5", 200)
    await check("GET", f"/api/scoreboard/users/{uuid.uuid4()}", 200)
    await check("GET", "/api/scoreboard/me", 200, headers=bearer(mint.mint()))
    await check("GET", "/api/scoreboard/me", 401, validate_request=False)
    await check("GET", "/healthz", 200)
    await check("GET", "/readyz", 200)
    await check("GET", "/metrics", 200)
    await check("GET", "/", 200)
    down = await make_gateway(
        wait_kafka=False, broadcaster_url=f"http://127.0.0.1:{unused_tcp_port}"
    )
    await Exchanges(down, spec)("GET", "/api/scoreboard/top", 503)


async def test_every_documented_path_is_routed_and_every_route_documented(
    gateway: Client,
) -> None:
    doc = yaml.safe_load(DOC.read_text())
    samples = {
        "{user_id}": str(uuid.uuid4()),
        "{path}": "app.js",
        "{board}": "global",
        "{window}": "daily",
    }
    for path, operations in doc["paths"].items():
        concrete = path
        for name, value in samples.items():
            concrete = concrete.replace(name, value)
        for method in operations:
            request = make_mocked_request(method.upper(), concrete, app=gateway.app)
            match = await gateway.app.router.resolve(request)
            assert match.http_exception is None, f"{method.upper()} {path} is documented only"
    documented = set(doc["paths"])
    for resource in gateway.app.router.resources():
        canonical = resource.canonical
        if canonical == "/api/auth/{tail}":
            assert {"/api/auth/login", "/api/auth/register"} <= documented
        else:
            assert canonical in documented, f"{canonical} is served but not documented"


@pytest.mark.parametrize(
    ("status", "body", "headers"),
    [
        (202, {"status": "accepted", "action_id": str(uuid.uuid4()), "points": 1, "x": 1}, {}),
        (202, {"status": "applied", "action_id": str(uuid.uuid4()), "points": 1}, {}),
        (429, {"type": "about:blank", "title": "t", "status": 429, "detail": "d"}, {}),
        (418, {"type": "about:blank", "title": "t", "status": 418, "detail": "d"}, {}),
    ],
)
def test_the_check_is_not_a_rubber_stamp(
    spec: OpenAPI, status: int, body: dict[str, Any], headers: dict[str, str]
) -> None:
    request = MockRequest("http://127.0.0.1:8080", "POST", "/api/scoreboard/update")
    media = "application/json" if status < 400 else "application/problem+json"
    response = MockResponse(
        json.dumps(body).encode(), status_code=status, headers=headers, content_type=media
    )
    with pytest.raises(OpenAPIError):
        spec.validate_response(request, response)
