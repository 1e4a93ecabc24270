"""Fixtures: the whole system as real processes for this run (see harness.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from common.testing import Infra, TestEnv, create_test_env, drop_test_env
from tests.e2e.harness import E2E_CATALOG, Service, System, free_port


@pytest.fixture(scope="session")
async def e2e_env(infra: Infra) -> AsyncIterator[TestEnv]:
    """A slice of its own, so other suites' rows never land on the end-to-end board."""
    env = await create_test_env(infra)
    yield env
    await drop_test_env(infra, env)


@pytest.fixture(scope="session")
def system(e2e_env: TestEnv) -> Iterator[System]:
    """Start auth, score, broadcaster and gateway; stop them at the end of the session."""
    test_env = e2e_env
    ports = {name: free_port() for name in ("auth", "score", "broadcaster", "gateway")}
    base = test_env.environ()
    base.update(
        {
            "SCOREBOARD_LOG_JSON": "true",
            "SCOREBOARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
            "SCOREBOARD_BROADCASTER_URL": f"http://127.0.0.1:{ports['broadcaster']}",
            "SCOREBOARD_ACTION_CATALOG": json.dumps(E2E_CATALOG),
            # Consumer groups are per run, like the topics.
            "SCOREBOARD_GROUP_ID": f"{test_env.topic_prefix}score",
            "SCOREBOARD_GROUP_ID_PREFIX": f"{test_env.topic_prefix}broadcaster",
            "SCOREBOARD_REPLICA_ID": "e2e",
            "PYTHONUNBUFFERED": "1",
        }
    )
    system = System()
    try:
        for name, port in ports.items():
            service = Service(name, port, {**base, "SCOREBOARD_PORT": str(port)})
            system.services[name] = service
            service.start()
        for service in system.services.values():
            service.wait_ready()
        yield system
    finally:
        for service in reversed(system.services.values()):
            service.stop()


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
