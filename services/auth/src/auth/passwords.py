"""Password hashing: argon2id (argon2-cffi) in a small, bounded thread pool.

Hashing is deliberately slow (~30 ms with the defaults here: t=2, m=19 MiB, p=1, OWASP's
recommended minimum for argon2id), so it never runs on the event loop. The pool is bounded in
threads (CPU and memory: each hash holds ``argon2_memory_kib``) and in queue length, so a flood
answers 503 quickly instead of queueing work that would time out anyway.

Logins and registrations are admitted separately, so registration can never starve login:

- a registration hashes only in one of ``password_hash_register_workers`` slots (default 1 of
  the 2 workers): at most that many of its hashes are in the pool, queued or running, so the other
  workers only ever see login work; at most ``password_hash_register_max_pending`` more wait for
  a slot, beyond that the registration gets 503;
- logins (verification, the dummy check for unknown names, a rehash) use every worker and have
  the ``password_hash_max_pending`` queue to themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import structlog
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from prometheus_client import Histogram

from auth.settings import Settings
from common.problems import ServiceUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")


class HasherBusy(ServiceUnavailable):
    """503: too many password hashes are already waiting; the client may retry shortly."""

    def __init__(self, what: str = "logins") -> None:
        super().__init__(
            f"too many {what} in progress, retry in a moment", headers={"Retry-After": "1"}
        )


class Passwords:
    """Hash and verify passwords off the event loop."""

    def __init__(self, settings: Settings, duration: Histogram) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=settings.password_hash_workers, thread_name_prefix="argon2"
        )
        self._max_pending = settings.password_hash_max_pending
        self._pending = 0
        self._register_slots = asyncio.Semaphore(settings.password_hash_register_workers)
        self._register_max_waiting = settings.password_hash_register_max_pending
        self._register_waiting = 0
        self._duration = duration
        self._dummy_hash = ""

    async def start(self) -> None:
        """Prepare the dummy hash that unknown usernames are checked against."""
        self._dummy_hash = await self.hash(secrets.token_urlsafe(24))

    def close(self) -> None:
        """Stop the worker threads (waits for hashes in flight)."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def hash(self, password: str) -> str:
        """The argon2id hash string (``$argon2id$v=19$m=...``) of ``password`` (login's lane)."""
        return await self._run("hash", self._hasher.hash, password)

    async def hash_new(self, password: str) -> str:
        """:meth:`hash` for a registration: in its own slots, never in login's share."""
        if self._register_waiting >= self._register_max_waiting:
            raise HasherBusy("registrations")
        self._register_waiting += 1
        try:
            await self._register_slots.acquire()
        finally:
            self._register_waiting -= 1
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        job = self._pool.submit(self._hasher.hash, password)
        # The slot is free only once the hash has left the pool (done, or cancelled before it
        # started): a request that goes away must not let one more registration into a worker.
        job.add_done_callback(lambda _: self._free_register_slot(loop))
        try:
            return await asyncio.wrap_future(job)
        finally:
            self._duration.labels("hash").observe(time.perf_counter() - start)

    async def verify(self, stored_hash: str, password: str) -> bool:
        """Whether ``password`` matches ``stored_hash``."""
        return await self._run("verify", self._verify, stored_hash, password)

    async def verify_dummy(self, password: str) -> None:
        """Spend what a real verification costs, so unknown users answer as slowly as known."""
        await self._run("verify", self._verify, self._dummy_hash, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except InvalidHashError:
            return False

    def _free_register_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        # A closed loop (shutdown) raises RuntimeError: nobody waits for a slot any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._register_slots.release)

    def _verify(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            log.error("password_hash_unusable", hash_prefix=stored_hash[:16])
            return False

    async def _run(self, op: str, fn: Callable[..., T], *args: str) -> T:
        if self._pending >= self._max_pending:
            raise HasherBusy()
        self._pending += 1
        start = time.perf_counter()
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        finally:
            self._pending -= 1
            self._duration.labels(op).observe(time.perf_counter() - start)
