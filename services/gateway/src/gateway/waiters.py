"""``Prefer: wait=N``: requests waiting for the broadcaster to report their action applied.

The broadcaster PUBLISHes ``{"action_id","user_id","username","score","version","rank"}`` on the
Redis channel ``P applied`` each time it applies a score change. A gateway process subscribes
only while some request of its own waits (and for ``linger_s`` after the last one, so a steady
trickle does not resubscribe every time): every subscribed replica receives every notice, which
at 1,000 updates/s was ~7% of a replica's CPU spent on notices nobody there waited for (most
traffic, the web page's included, does not ask to wait). Messages for actions nobody here waits
for are ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
import structlog
from pydantic import ValidationError
from redis.exceptions import RedisError

from common.backoff import Backoff
from common.events import AppliedNotice

log = structlog.get_logger(__name__)


class AppliedWaiters:
    """Futures of requests waiting for their action, keyed by action id."""

    def __init__(self, *, linger_s: float = 30.0, subscribe_timeout_s: float = 1.0) -> None:
        self._pending: dict[uuid.UUID, list[asyncio.Future[AppliedNotice]]] = {}
        self._linger = linger_s
        self._subscribe_timeout = subscribe_timeout_s
        self._wanted = asyncio.Event()
        self.subscribed = asyncio.Event()

    @property
    def waiting(self) -> int:
        """How many requests are waiting right now."""
        return sum(len(futures) for futures in self._pending.values())

    @asynccontextmanager
    async def expect(self, action_id: uuid.UUID) -> AsyncIterator[asyncio.Future[AppliedNotice]]:
        """Register interest in ``action_id`` for the duration of the block.

        On entry the channel subscription is up (or could not be made within
        ``subscribe_timeout_s``, e.g. Redis is down: the request then simply waits its time and
        answers 202), so a notice published after the block starts its work is not missed.
        """
        future: asyncio.Future[AppliedNotice] = asyncio.get_running_loop().create_future()
        self._pending.setdefault(action_id, []).append(future)
        self._wanted.set()
        try:
            if not self.subscribed.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._subscribe_timeout):
                        await self.subscribed.wait()
            yield future
        finally:
            futures = self._pending.get(action_id, [])
            if future in futures:
                futures.remove(future)
            if not futures:
                self._pending.pop(action_id, None)
            if not future.done():
                future.cancel()

    def resolve(self, applied: AppliedNotice) -> bool:
        """Wake the requests waiting for ``applied.action_id``; False if there were none."""
        futures = self._pending.pop(applied.action_id, [])
        for future in futures:
            if not future.done():
                future.set_result(applied)
        return bool(futures)

    def on_message(self, data: bytes) -> None:
        """Handle one raw channel message."""
        try:
            applied = AppliedNotice.model_validate_json(data)
        except ValidationError as exc:
            log.warning("applied_message_invalid", error=str(exc)[:200])
            return
        self.resolve(applied)

    async def listen(self, redis: aioredis.Redis, channel: str) -> None:
        """Forever: subscribe to ``channel`` while requests wait, dispatch, reconnect on errors."""
        backoff = Backoff(base_s=0.5, cap_s=10.0)
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        while True:
            await self._wanted.wait()
            pubsub = redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                self.subscribed.set()
                backoff.reset()
                idle_since = None
                while True:
                    # A bounded read keeps the connection's health checks running while idle.
                    message = await pubsub.get_message(timeout=1.0)
                    if task is not None and task.cancelling():
                        # On Python 3.11 a cancellation racing redis-py's read timeout can
                        # surface as that timeout (asyncio.timeout), so it would be lost.
                        raise asyncio.CancelledError
                    if message is not None and message.get("type") == "message":
                        self.on_message(message["data"])
                    if self._pending:
                        idle_since = None
                    elif idle_since is None:
                        idle_since = loop.time()
                    elif loop.time() - idle_since >= self._linger:
                        break
            except (RedisError, OSError) as exc:
                delay = backoff.next_delay()
                log.warning(
                    "applied_listener_reconnecting", error=repr(exc), retry_in_s=round(delay, 2)
                )
                await asyncio.sleep(delay)
            finally:
                self.subscribed.clear()
                if not self._pending:
                    self._wanted.clear()
                await pubsub.aclose()  # type: ignore[no-untyped-call]
