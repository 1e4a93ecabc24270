"""The score service as real processes: kill -9 mid-stream, restarts, two replicas.

Whatever dies when, every command is applied once and yields exactly one ScoreChanged (as a
read_committed consumer sees the topic), with consecutive versions per user.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from common.events import ScoreCommand, Topics
from score.settings import Settings
from services.score.tests.support import (
    TEST_CATALOG,
    Sender,
    add_users,
    applied_count,
    assert_versions_consecutive,
    changes,
    command,
    distinct_changes,
    eventually,
    read_to_end,
    read_topic,
)
from testkit import env as testing

pytestmark = pytest.mark.integration

N_COMMANDS = 2000
N_USERS = 40


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Replicas:
    """Score service processes sharing one consumer group."""

    env: dict[str, str]
    logs: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    def start(self) -> int:
        """Start one more replica; returns its index."""
        port = _free_port()
        index = len(self.procs)
        with open(self.logs / f"score-{index}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "score"],
                env={**self.env, "SCOREBOARD_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        self.ports.append(port)
        return index

    async def ready(self, index: int, timeout_s: float = 60) -> None:
        """Wait until the replica answers /readyz with 200 (it holds partitions)."""
        url = f"http://127.0.0.1:{self.ports[index]}/readyz"
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout_s):
            while True:
                assert self.procs[index].poll() is None, self.tail(index)
                try:
                    async with http.get(url) as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def relay_leader(self) -> int:
        """The index of the replica whose outbox relay publishes (holds the lock)."""
        async with aiohttp.ClientSession() as http, asyncio.timeout(30):
            while True:
                for index, port in enumerate(self.ports):
                    if self.procs[index].poll() is not None:
                        continue
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        if "scoreboard_score_relay_leader 1.0" in await resp.text():
                            return index
                await asyncio.sleep(0.1)

    def kill(self, index: int, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the process to end; returns its exit code."""
        proc = self.procs[index]
        proc.send_signal(sig)
        return proc.wait(timeout=30)

    def tail(self, index: int) -> str:
        """The end of a replica's log."""
        return (self.logs / f"score-{index}.log").read_text(errors="replace")[-3000:]

    def stop_all(self) -> None:
        """Kill whatever is still running."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture
def replicas(test_env: testing.TestEnv, settings: Settings, tmp_path: Path) -> Iterator[Replicas]:
    """A factory for score processes on this test's topics and group."""
    env = {
        **test_env.environ(),
        "SCOREBOARD_TOPIC_PREFIX": settings.topic_prefix,
        "SCOREBOARD_GROUP_ID": settings.group_id,
        "SCOREBOARD_POSTGRES_POOL_MAX": "2",
        "SCOREBOARD_RETRY_CAP_S": "1",
        "SCOREBOARD_RELAY_STANDBY_POLL_S": "0.5",
        "SCOREBOARD_ACTION_CATALOG": json.dumps(TEST_CATALOG),
        "PYTHONUNBUFFERED": "1",
    }
    group = Replicas(env, tmp_path)
    yield group
    group.stop_all()


def _stream(users: list[uuid.UUID]) -> list[ScoreCommand]:
    rng = random.Random(42)
    return [command(rng.choice(users), rng.randint(1, 100)) for _ in range(N_COMMANDS)]


async def _produce(sender: Sender, cmds: list[ScoreCommand]) -> None:
    # In slices, so the service is busy applying while commands keep arriving.
    for i in range(0, len(cmds), 50):
        await sender.send(cmds[i : i + 50])
        await asyncio.sleep(0.01)


async def _verify(
    settings: Settings, pg: asyncpg.Connection, users: list[uuid.UUID], cmds: list[ScoreCommand]
) -> None:
    async def all_applied() -> bool:
        return await applied_count(pg, users) == len(cmds)

    await eventually(all_applied, timeout_s=60)
    total = await pg.fetchval("SELECT sum(score) FROM scores WHERE user_id = ANY($1)", users)
    assert total == sum(c.points for c in cmds)
    records = await read_topic(
        settings, Topics(settings.topic_prefix).changed, distinct_changes(len(cmds), users), 60
    )
    per_user = assert_versions_consecutive(changes(records, users))
    assert sum(per_user.values()) == len(cmds)
    # Exactly one ScoreChanged per applied command: the whole topic, not one event more.
    keys = {str(u).encode() for u in users}
    everything = await read_to_end(settings, Topics(settings.topic_prefix).changed)
    assert len([r for r in everything if r.key in keys]) == len(cmds)


async def _applied_at_least(pg: asyncpg.Connection, users: list[uuid.UUID], n: int) -> bool:
    return await applied_count(pg, users) >= n


async def test_kill_9_mid_stream_then_restart_applies_every_command_once(
    settings: Settings, sender: Sender, pg: asyncpg.Connection, replicas: Replicas
) -> None:
    users = await add_users(pg, N_USERS)
    cmds = _stream(users)
    first = replicas.start()
    await replicas.ready(first)
    producing = asyncio.create_task(_produce(sender, cmds))
    await eventually(lambda: _applied_at_least(pg, users, 400))
    assert replicas.kill(first) == -signal.SIGKILL
    restarted = replicas.start()
    await producing
    await replicas.ready(restarted)
    await _verify(settings, pg, users, cmds)
    # SIGTERM drains: the service finishes its batch, commits and exits cleanly.
    assert replicas.kill(restarted, signal.SIGTERM) == 0, replicas.tail(restarted)


async def test_two_replicas_one_killed_apply_every_command_once(
    settings: Settings, sender: Sender, pg: asyncpg.Connection, replicas: Replicas
) -> None:
    users = await add_users(pg, N_USERS)
    cmds = _stream(users)
    replicas.start()
    replicas.start()
    await asyncio.gather(replicas.ready(0), replicas.ready(1))
    # Kill the one that also relays the outbox: both its partitions and the relay move over.
    victim = await replicas.relay_leader()
    survivor = 1 - victim
    producing = asyncio.create_task(_produce(sender, cmds))
    await eventually(lambda: _applied_at_least(pg, users, 400))
    assert replicas.kill(victim) == -signal.SIGKILL
    await producing
    await _verify(settings, pg, users, cmds)
    assert await replicas.relay_leader() == survivor
    assert replicas.kill(survivor, signal.SIGTERM) == 0, replicas.tail(survivor)
