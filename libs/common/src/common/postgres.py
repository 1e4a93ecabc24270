"""The asyncpg pool with sane timeouts."""

from __future__ import annotations

import asyncpg

from common.settings import CommonSettings


async def create_pool(settings: CommonSettings, *, dsn: str | None = None) -> asyncpg.Pool:
    """Open a pool; statements time out instead of hanging a request forever."""
    pool = await asyncpg.create_pool(
        dsn or settings.postgres_dsn,
        min_size=settings.postgres_pool_min,
        max_size=settings.postgres_pool_max,
        command_timeout=10,
        timeout=10,
        server_settings={"application_name": settings.service_name},
    )
    assert pool is not None
    return pool
