"""The hashing pool's admission: registrations use their share of the workers, never login's."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import CollectorRegistry, Histogram

from auth.passwords import HasherBusy, Passwords
from auth.settings import Settings


class StuckHasher:
    """Stands in for argon2's hasher: ``hash`` blocks until released, ``verify`` is instant."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = 0
        self.most_running = 0
        self._lock = threading.Lock()

    def hash(self, password: str) -> str:
        with self._lock:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        self.release.wait(timeout=30)
        with self._lock:
            self.running -= 1
        return f"hash-of-{password}"

    def verify(self, stored_hash: str, password: str) -> bool:
        return stored_hash == f"hash-of-{password}"


@pytest.fixture
def passwords(auth_settings: Callable[..., Settings]) -> Iterator[tuple[Passwords, StuckHasher]]:
    settings = auth_settings(password_hash_workers=2, password_hash_register_max_pending=3)
    duration = Histogram("h", "h", ["op"], registry=CollectorRegistry())
    passwords = Passwords(settings, duration)
    stuck = StuckHasher()
    passwords._hasher = stuck  # type: ignore[assignment]  # the pool and its admission are real
    yield passwords, stuck
    stuck.release.set()
    passwords.close()


async def test_logins_verify_while_registrations_fill_their_share(
    passwords: tuple[Passwords, StuckHasher],
) -> None:
    pw, stuck = passwords
    # One registration hashes (its one worker), three wait for it, the fifth is turned away.
    registrations = [asyncio.create_task(pw.hash_new(f"p{i}")) for i in range(4)]
    await asyncio.sleep(0.1)
    with pytest.raises(HasherBusy):
        await pw.hash_new("one too many")
    assert stuck.running == 1

    # Logins still have a worker of their own.
    for _ in range(20):
        assert await asyncio.wait_for(pw.verify("hash-of-x", "x"), timeout=5)

    stuck.release.set()
    assert await asyncio.gather(*registrations) == [f"hash-of-p{i}" for i in range(4)]
    assert stuck.most_running == 1


def test_registrations_may_not_take_every_worker(auth_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="password_hash_register_workers"):
        auth_settings(password_hash_workers=2, password_hash_register_workers=2)
