"""The asyncpg pool with sane timeouts, and a loop that follows a NOTIFY channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from common.backoff import Backoff
from common.settings import CommonSettings

log = structlog.get_logger(__name__)


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


async def follow_channel(
    dsn: str,
    channel: str,
    step: Callable[[], Awaitable[object]],
    *,
    poll_s: float,
    backoff: Backoff,
    failing: str,
) -> None:
    """Run ``step`` whenever ``channel`` is notified, and every ``poll_s`` anyway, until
    cancelled; a failure is logged as ``failing`` and everything, the LISTEN connection
    included, is retried after ``backoff``.

    The wake-up is cleared before each ``step``, so a commit that notifies while a step runs
    triggers the next one: nothing notified is missed, and the poll covers a lost notification.
    """
    wake = asyncio.Event()
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await asyncpg.connect(dsn, timeout=10)
            await conn.add_listener(channel, lambda *_: wake.set())
            while True:
                wake.clear()  # before reading: a commit after this point wakes the next step
                await step()
                backoff.reset()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll_s):
                        await wake.wait()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(failing, error=repr(exc), attempt=backoff.attempt + 1)
            await backoff.sleep()
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.close(timeout=5))
