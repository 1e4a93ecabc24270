"""Background tasks of every service: started with their app, logged when they fail, stopped
reliably when it stops (:func:`running`, used in each service's cleanup context).

On Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives just as the awaited
call completes (fixed in 3.12). redis-py wraps its socket reads in it, so cancelling a task that
talks to Redis occasionally does nothing, and a shutdown that cancels once and awaits hangs.
Measured here: about one cancellation in seven of a task looping on Redis commands was lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine, Mapping
from contextlib import asynccontextmanager
from typing import Any

import structlog

log = structlog.get_logger(__name__)


async def stop(task: asyncio.Task[None], *, retry_s: float = 1.0) -> None:
    """Cancel ``task`` until it is done.

    ``retry_s`` leaves the task time to clean up (close its clients) before it is cancelled
    again; the retry only matters when a cancellation was lost.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=retry_s)
    if not task.cancelled():
        task.exception()  # retrieved here; spawn's callback has logged it


def spawn(coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Start ``coro`` as a task that logs, once, if it ends with an exception."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report_exit)
    return task


def _report_exit(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("background_task_failed", task=task.get_name(), exc_info=exc)


@asynccontextmanager
async def running(
    tasks: Mapping[str, Coroutine[Any, Any, None]],
    *,
    stop_event: asyncio.Event | None = None,
    grace_s: float = 0.0,
) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    """Run background tasks for the duration of the block (a service's cleanup context).

    On exit ``stop_event`` (when given) is set and the tasks get ``grace_s`` to finish what they
    are doing (score: the batch in progress commits); whatever still runs is then cancelled until
    it is done (:func:`stop`). Each task that fails is logged once, when it ends.
    """
    started = {name: spawn(coro, name) for name, coro in tasks.items()}
    try:
        yield started
    finally:
        if stop_event is not None:
            stop_event.set()
            pending = [t for t in started.values() if not t.done()]
            if pending and grace_s > 0:
                _, late = await asyncio.wait(pending, timeout=grace_s)
                for task in late:
                    log.warning("shutdown_cancelled", task=task.get_name())
        for task in started.values():
            await stop(task)
