"""Fixtures: the whole system as real processes for this run (see harness.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from testkit.env import Infra, TestEnv, create_test_env, drop_test_env
from tests.e2e.harness import E2E_CATALOG, System, start_system


@pytest.fixture(scope="session")
async def e2e_env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A slice of its own, so other suites' rows never land on the end-to-end board."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


@pytest.fixture(scope="session")
def system(e2e_env: TestEnv) -> Iterator[System]:
    """Start auth, score, broadcaster and two gateway replicas sharing the public port (so
    tickets, waits and WebSockets cross replicas as in production); stop them at the end."""
    system = start_system(
        e2e_env,
        {
            "SCOREBOARD_ACTION_CATALOG": json.dumps(E2E_CATALOG),
            # Short key timings so a rotation completes within a test (production: 30 s / 120 s).
            "SCOREBOARD_KEY_RELOAD_S": "0.5",
            "SCOREBOARD_KEY_PUBLISH_AHEAD_S": "2",
            "SCOREBOARD_JWKS_REFRESH_INTERVAL_S": "0.5",
        },
        gateways=2,
    )
    try:
        yield system
    finally:
        system.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain HTTP client, as a player's browser would use."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything here needs the real servers."""
    for item in items:
        if str(Path(__file__).parent) in str(item.path):
            item.add_marker(pytest.mark.integration)


# The open edge: every per-address and global limit lifted (one test client is every "user"),
# failed logins answered without the slow-down, and short edge timeouts so the slow-client
# tests finish in seconds (production: 75 s and 10 s).
EDGE_KEEPALIVE_S = 3.0
EDGE_BODY_TIMEOUT_S = 1.0
EDGE_ENV = {
    **{
        f"SCOREBOARD_{kind}_{what}_PER_ADDRESS": "1000000"
        for kind in ("UPDATE", "ACTIONS", "AUTH", "REGISTER", "READS", "WS_CONNECT")
        for what in ("RATE", "BURST")
    },
    "SCOREBOARD_REGISTER_RATE_GLOBAL": "1000000",
    "SCOREBOARD_REGISTER_BURST_GLOBAL": "1000000",
    "SCOREBOARD_LOGIN_FAIL_PER_ADDRESS": "1000000",
    "SCOREBOARD_LOGIN_DELAY_BASE_S": "0",
    "SCOREBOARD_HTTP_KEEPALIVE_S": str(EDGE_KEEPALIVE_S),
    "SCOREBOARD_HTTP_BODY_TIMEOUT_S": str(EDGE_BODY_TIMEOUT_S),
}


@pytest.fixture(scope="session")
async def edge_env(infra: Infra) -> AsyncIterator[TestEnv]:
    """The open edge's slice: its board and limits meet no other suite's."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


@pytest.fixture(scope="session")
def edge_system(edge_env: TestEnv) -> Iterator[System]:
    """The whole system with the default catalog, the operator endpoints on ports of their own
    (the public port as in production) and the limits of :data:`EDGE_ENV`: for the tests that
    throw everything at the public surface."""
    system = start_system(edge_env, EDGE_ENV, admin_ports=True)
    try:
        yield system
    finally:
        system.stop()
