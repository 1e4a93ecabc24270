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
