"""Gateway fixtures: the real app in-process on this run's Redis and Kafka, a real upstream
server for auth/broadcaster, and tokens signed with a key published in that upstream's JWKS."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer
from pytest_aiohttp import AiohttpClient

from gateway.app import create_app
from gateway.catalog import DEFAULT_CATALOG
from gateway.components import components_key
from gateway.settings import Settings
from services.gateway.tests.support import Client, MakeGateway, SigningKey, TokenMint, Upstream
from testkit.env import TestEnv

PAGE = "<!doctype html><title>board</title><script type=module src=/static/app.js></script>"


@pytest.fixture(scope="session")
def signing_key() -> SigningKey:
    """The key "auth" signs access tokens with."""
    return SigningKey.ed25519("test-ed25519-1")


@pytest.fixture(scope="session")
def mint(signing_key: SigningKey) -> TokenMint:
    """Mints tokens with the published key."""
    return TokenMint(signing_key)


@pytest.fixture(scope="session")
async def upstream(signing_key: SigningKey) -> AsyncIterator[Upstream]:
    """The real upstream server (auth + broadcaster stand-in) for the whole session."""
    state = Upstream(jwks=[signing_key.jwk()])
    server = TestServer(state.build(), host="127.0.0.1")
    await server.start_server()
    state.server = server
    yield state
    await server.close()


@pytest.fixture(scope="session")
def static_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A web page directory of our own, so these tests do not depend on the real page."""
    path = tmp_path_factory.mktemp("static")
    (path / "index.html").write_text(PAGE)
    (path / "app.js").write_text("export const ok = true;\n")
    (path / "style.css").write_text("body { margin: 0 }\n")
    return path


@pytest.fixture
def gateway_settings(
    test_env: TestEnv, upstream: Upstream, static_dir: Path
) -> Callable[..., Settings]:
    """Settings on this run's slice; each call gets its own Redis prefix (limits never meet)."""

    def make(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            **test_env.overrides(),
            "redis_prefix": f"{test_env.redis_prefix}{uuid.uuid4().hex[:8]}:",
            "auth_url": upstream.url,
            "broadcaster_url": upstream.url,
            "static_dir": static_dir,
            "action_hmac_keys": "t1:test-hmac-secret-0123456789",
            # The earning rules are off unless a test is about them (test_earning.py): the
            # default catalog's types, instant, with tickets in parallel and no budget to speak of.
            "action_catalog": {
                name: {"points": spec.points, "min_duration_ms": 0, "max_open": 100}
                for name, spec in DEFAULT_CATALOG.items()
            },
            "points_budget_per_minute": 1_000_000_000,
        }
        return Settings.load(**{**base, **overrides})

    return make


@pytest.fixture
def make_gateway(
    aiohttp_client: AiohttpClient, gateway_settings: Callable[..., Settings]
) -> MakeGateway:
    """Start a gateway app with settings ``overrides``; by default wait until Kafka is up."""

    async def make(*, wait_kafka: bool = True, **overrides: Any) -> Client:
        client = await aiohttp_client(create_app(gateway_settings(**overrides)))
        if wait_kafka:
            await client.app[components_key].publisher.wait_started()
        return client

    return make


@pytest.fixture
async def gateway(make_gateway: MakeGateway) -> Client:
    """A gateway with the default settings (short minimum durations for the tests)."""
    return await make_gateway()
