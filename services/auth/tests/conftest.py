"""Auth test fixtures: the real app in-process on this run's PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from auth.app import create_app
from auth.settings import Settings
from common.settings import CommonSettings

Client = TestClient[web.Request, web.Application]

# What the root fixtures isolate per run.
_SLICE = {
    "postgres_dsn",
    "redis_url",
    "redis_prefix",
    "kafka_bootstrap",
    "topic_prefix",
    "admin_port",
}
# Every test registers from 127.0.0.1, so registration limits are lifted unless a test sets its
# own (test_signup_throttle.py does); every other setting keeps the service's default.
_NO_SIGNUP_LIMITS = {
    "register_rate_per_address": 1e6,
    "register_burst_per_address": 1_000_000,
    "register_rate_global": 1e6,
    "register_burst_global": 1_000_000,
}


@pytest.fixture
def auth_settings(common_settings: CommonSettings) -> Callable[..., Settings]:
    """Settings for this run's slice of the servers, with ``overrides``."""

    def make(**overrides: Any) -> Settings:
        slice_ = common_settings.model_dump(include=_SLICE)
        return Settings.load(**{**slice_, **_NO_SIGNUP_LIMITS, **overrides})

    return make


@pytest.fixture
def make_client(
    aiohttp_client: AiohttpClient, auth_settings: Callable[..., Settings]
) -> Callable[..., Awaitable[Client]]:
    """Start an auth app (a replica) with settings ``overrides`` and return its client."""

    async def make(**overrides: Any) -> Client:
        return await aiohttp_client(create_app(auth_settings(**overrides)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[Client]]) -> Client:
    """A client of an app with the default settings."""
    return await make_client()


@pytest.fixture
def auth_cli(
    common_settings: CommonSettings,
) -> Callable[..., Awaitable[subprocess.CompletedProcess[str]]]:
    """Run ``auth <args>`` in a subprocess on this run's slice (``env`` adds SCOREBOARD_*)."""

    async def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("SCOREBOARD_")}
        for name, value in {**common_settings.model_dump(include=_SLICE), **env}.items():
            environ[f"SCOREBOARD_{name.upper()}"] = str(value)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "auth",
            *args,
            env=environ,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise
        assert proc.returncode is not None
        return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())

    return run
