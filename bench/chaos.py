"""`make chaos`: does an acknowledged update survive crashes, applied exactly once? (issue 11)

    uv run python bench/chaos.py [--seconds 60] [--rate 200] [--players 150] [--faults 9]
                                 [--faults gateway,score,postgres,...] [--watchers 20]
                                 [--gateways 2] [--seed N] [--out bench/results]

A program that reports, not a timed test. It starts a stack of its own: PostgreSQL, Redis and
Kafka on free ports with their data under ``.local/chaos/<run>/`` (``scripts/infra.py`` starts
each one), and auth, score, broadcaster and ``--gateways`` gateway processes sharing one port
(``tests/e2e/harness.py``); it never touches the shared servers on 5432/6379/9092 nor what
``make up`` started, because it kills what it runs.

``--players`` players register and log in through the gateway, then complete actions through the
real HTTP API at ``--rate`` updates a second for ``--seconds``: ``POST /api/actions`` for a ticket,
wait the action type's ``min_duration_ms``, ``POST /api/scoreboard/update``. Each player does one
action at a time and comes from an address of its own (``X-Forwarded-For``, trusted from
127.0.0.1 by this run's gateway), so per-address limits see one player each. A client retries the
SAME request on 503, 429 and connection errors (cut off, refused, timed out), as the contract
allows, and stops at 202/200 or at 409, which it takes as "already done". Meanwhile a controller
injects one fault at a time, spread over the run, each recovered before the next:

- ``gateway``, ``gateway-2``, ``score``, ``broadcaster``: SIGKILL, then started again;
- ``kafka``: SIGKILL of the broker, then started again on the same data;
- ``postgres``: ``pg_ctl stop -m immediate``, then started again (crash recovery);
- ``redis``: SIGKILL, then started again on its append-only file.

``--watchers`` WebSocket clients watch ``/ws/scoreboard`` through the gateway and reconnect when
cut. A service that exits by itself is started again (as an orchestrator would) and reported.

After the load it waits for the pipeline to drain and prints (and writes as JSON to
``bench/results/chaos.json`` and ``chaos-<time>.json``; the last stdout line is the same JSON):

- acknowledged: updates answered 202, 200 or 409; applied: actions in PostgreSQL;
- lost: acknowledged but not applied, each classified by what its client saw (its attempts, the
  fault they overlapped), whether its command reached Kafka and its done marker in Redis;
- doubled: players whose score differs from the sum of their applied actions' points, or whose
  version differs from their count;
- ScoreChanged missing and doubled: the score-changed topic read from the beginning with
  ``isolation_level="read_committed"``, events matched to applied actions by ``action_id``
  (extra copies classified by the fault they followed);
- converged: seconds from the moment the last fault had recovered and the load had stopped
  until Redis's top 100 equalled PostgreSQL's (and still equal at the end);
- watchers at the final board version (after one closing update by the leader, which changes
  the top 10 so that every watcher gets a frame with the final version).

Exit status 0 only if lost, doubled, events missing and events doubled are all 0 and the board
converged; 1 otherwise; 2 if the harness itself failed (a server that would not start).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import traceback
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import (
    HttpClient,
    HttpConnectionClosed,
    HttpProtocolError,
    WsWatcher,
    encode_post,
)
from common.backoff import Backoff
from common.events import Topics
from common.kafka import topic_specs
from common.keyspace import BoardKeys, done_key, ticket_key
from scripts.services import _listening as listening
from testkit.env import TestEnv, create_test_env, kafka_test_auth
from testkit.stack import Stack, infra
from testkit.stack import alive as _alive
from testkit.stack import proc_text as _proc_text
from tests.e2e import harness
from tests.e2e.harness import Player, Service, System, register_and_login

ROOT: Final = Path(__file__).resolve().parent.parent
CHAOS_DIR: Final = ROOT / ".local" / "chaos"
RESULTS: Final = ROOT / "bench" / "results"
HOST: Final = "127.0.0.1"
# One fault at a time, in this order; the default run takes all nine (the mix).
DEFAULT_FAULTS: Final = (
    "gateway",
    "score",
    "postgres",
    "redis",
    "kafka",
    "broadcaster",
    "gateway-2",
    "score",
    "broadcaster",
)
SERVERS: Final = ("kafka", "postgres", "redis")
PARTITIONS: Final = 12  # of the commands and changes topics, as in production
# Every player and watcher comes from an address of its own (198.18.0.0/15, the range for
# benchmarks), which the gateway believes from X-Forwarded-For as it would behind an ingress:
# the per-address limits and throttles then see one player each, not the whole load as one.
GATEWAY_ENV: Final = {"SCOREBOARD_TRUSTED_PROXIES": "127.0.0.1/32"}


def player_address(i: int) -> str:
    """The address player ``i`` connects from."""
    return f"198.18.{i // 250}.{i % 250 + 1}"


def watcher_address(i: int) -> str:
    """The address watcher ``i`` connects from."""
    return f"198.19.{i // 250}.{i % 250 + 1}"


ANSWERED: Final = frozenset({"200", "202", "409"})  # what a client takes as "done"
RETRIED_STATUSES: Final = frozenset({429, 503})
ATTEMPT_TIMEOUT_S: Final = 15.0  # longer than the gateway's publish timeout (5 s)
GIVE_UP_S: Final = 120.0  # a client stops retrying one update after this long
EXIT_PASS, EXIT_FAIL, EXIT_HARNESS = 0, 1, 2


def say(msg: str) -> None:
    """A progress line."""
    print(msg, flush=True)


class Clock:
    """Seconds since the load started (monotonic), and the wall time of that start."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.wall = time.time()

    def reset(self) -> None:
        """Start counting now."""
        self.start, self.wall = time.monotonic(), time.time()

    def now(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.start

    def of_wall(self, epoch_s: float) -> float:
        """A wall-clock instant (e.g. a Kafka timestamp) in seconds since the start."""
        return epoch_s - self.wall

    def stamp(self) -> str:
        """``[  12.3s]``, for progress lines."""
        return f"[{self.now():7.1f}s]"


# --------------------------------------------------------------------------- the private stack


def reap_leftovers() -> None:
    """Stop what a chaos run that died without cleaning up left running (only processes that
    provably belong to it), drop its data, keep the logs of the five newest runs."""
    if not CHAOS_DIR.exists():
        return
    runs = sorted((d for d in CHAOS_DIR.iterdir() if d.is_dir()), key=lambda d: d.name)
    for run_dir in runs:
        owner = run_dir / "owner.pid"
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            pid = 0
        if pid and _alive(pid) and "chaos" in _proc_text(pid, "cmdline"):
            continue  # another chaos run, alive: leave it alone
        _reap(run_dir)
    for run_dir in runs[:-5]:
        if not (run_dir / "owner.pid").exists():
            shutil.rmtree(run_dir, ignore_errors=True)


def _reap(run_dir: Path) -> None:
    try:
        ports = json.loads((run_dir / "ports.json").read_text())
    except (OSError, ValueError):
        ports = {}
    bootstrap = f"SCOREBOARD_KAFKA_BOOTSTRAP=127.0.0.1:{ports.get('kafka')}"
    with contextlib.suppress(OSError, ValueError):
        for pid in json.loads((run_dir / "services.json").read_text()).values():
            if _alive(pid) and bootstrap in _proc_text(pid, "environ"):
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):
        pid = int((run_dir / "kafka" / "kafka.pid").read_text())
        if _alive(pid) and str(run_dir) in _proc_text(pid, "cmdline"):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError, ValueError):
        pid = int((run_dir / "redis" / "redis.pid").read_text())
        if _alive(pid) and os.readlink(f"/proc/{pid}/cwd") == str(run_dir / "redis"):
            os.kill(pid, signal.SIGKILL)
    if (run_dir / "postgres" / "data" / "postmaster.pid").exists():
        with contextlib.suppress(Exception):
            infra.pg_ctl(run_dir / "postgres", "stop", "-m", "immediate", "-w")
    for name in ("postgres", "redis", "kafka"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    (run_dir / "owner.pid").unlink(missing_ok=True)


# --------------------------------------------------------------------------- faults


@dataclass
class Fault:
    """One injected fault and how the system came back."""

    n: int
    target: str
    planned_at: float
    killed_at: float | None = None
    restarted_at: float | None = None  # the process/server was started again
    ready_at: float | None = None  # it answered (ready) again
    error: str | None = None

    @property
    def verb(self) -> str:
        """What was done to it."""
        if self.target == "postgres":
            return "immediate stop"
        return "SIGKILL"

    @property
    def name(self) -> str:
        """``fault 3 (postgres immediate stop)``."""
        return f"fault {self.n} ({self.target} {self.verb})"

    def window(self) -> tuple[float, float]:
        """From the kill until it was ready again (open-ended while recovering)."""
        start = self.killed_at if self.killed_at is not None else self.planned_at
        return start, self.ready_at if self.ready_at is not None else float("inf")


def fault_plan(names: list[str], seconds: float) -> list[Fault]:
    """Spread the faults over the run: none in the first and last tenth."""
    if not names:
        return []
    first, last = 0.1 * seconds, 0.85 * seconds
    step = (last - first) / max(1, len(names) - 1)
    return [Fault(i + 1, name, first + i * step) for i, name in enumerate(names)]


class Controller:
    """Injects the planned faults one at a time and restarts services that exit by themselves."""

    def __init__(
        self, clock: Clock, stack: Stack, system: System, run_dir: Path, faults: list[Fault]
    ) -> None:
        self.clock, self.stack, self.system, self.run_dir = clock, stack, system, run_dir
        self.faults = faults
        self.unplanned: list[dict[str, Any]] = []
        self.busy: set[str] = set()  # services the controller is restarting
        self.done = asyncio.Event()
        self.downtime_s = 1.0  # between the kill and the start, as a supervisor would take

    def record_pids(self) -> None:
        """The services' pids, so a later run can stop them if this one dies uncleanly."""
        pids = {n: s.proc.pid for n, s in self.system.services.items() if s.proc is not None}
        (self.run_dir / "services.json").write_text(json.dumps(pids))

    async def run(self) -> None:
        """Each fault at its time, but never before the previous one has recovered."""
        try:
            for fault in self.faults:
                delay = fault.planned_at - self.clock.now()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.inject(fault)
                await asyncio.sleep(2.0)  # let the system settle before the next one
        finally:
            self.done.set()

    async def inject(self, fault: Fault) -> None:
        """Kill the target, start it again, wait until it is ready."""
        target = fault.target
        total = len(self.faults)
        say(f"{self.clock.stamp()} fault {fault.n}/{total}: {target} {fault.verb}")
        self.busy.add(target)
        try:
            fault.killed_at = self.clock.now()
            await asyncio.to_thread(self._kill, target)
            await asyncio.sleep(self.downtime_s)
            fault.restarted_at = self.clock.now()
            await asyncio.to_thread(self._start, target)
            fault.ready_at = self.clock.now()
            down = fault.ready_at - fault.killed_at
            say(f"{self.clock.stamp()} fault {fault.n}/{total}: {target} back, down {down:.1f}s")
        except Exception as exc:
            fault.error = repr(exc)
            say(f"{self.clock.stamp()} fault {fault.n}/{total}: {target} did not recover: {exc!r}")
        finally:
            self.busy.discard(target)

    def _kill(self, target: str) -> None:
        if target == "kafka":
            self.stack.kill_kafka()
        elif target == "postgres":
            self.stack.stop_postgres("immediate")
        elif target == "redis":
            self.stack.kill_redis()
        else:
            self.system.services[target].stop(signal.SIGKILL)

    def _start(self, target: str) -> None:
        if target == "kafka":
            self.stack.start_kafka()
        elif target == "postgres":
            self.stack.start_postgres()
        elif target == "redis":
            self.stack.start_redis()
        else:
            restart(self.system.services[target])
            self.record_pids()

    async def supervise(self) -> None:
        """Start again any service that exited while no fault was being injected into it."""
        while True:
            await asyncio.sleep(0.5)
            for name, service in self.system.services.items():
                proc = service.proc
                if name in self.busy or proc is None or proc.poll() is None:
                    continue
                at = self.clock.now()
                say(f"{self.clock.stamp()} {name} exited by itself (status {proc.returncode})")
                self.busy.add(name)
                try:
                    await asyncio.to_thread(restart, service)
                    self.record_pids()
                    self.unplanned.append(
                        {"service": name, "at_s": round(at, 1), "status": proc.returncode}
                    )
                except Exception as exc:
                    self.unplanned.append(
                        {"service": name, "at_s": round(at, 1), "error": repr(exc)}
                    )
                finally:
                    self.busy.discard(name)


def restart(service: Service) -> None:
    """Start a (dead) service again and wait until it is ready; a gateway replica also until it
    listens itself (its siblings answer on the shared port meanwhile)."""
    service.start()
    service.wait_ready(timeout=120)
    assert service.proc is not None
    deadline = time.monotonic() + 60
    while not listening(service.proc.pid, service.port):
        if service.proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{service.name} is not listening: {service.log_tail(1500)}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- the load


class Gateways:
    """Keep-alive HTTP to the gateway port (bench.loadgen's lean client). SO_REUSEPORT spreads
    connections, not requests, over the gateway processes: the client is replaced every
    ``rotate_s`` (the old one closes once idle), so new connections keep reaching every process,
    a restarted one included."""

    def __init__(self, port: int, rotate_s: float = 2.0) -> None:
        self.port, self.rotate_s = port, rotate_s
        self._loop = asyncio.get_running_loop()
        self._client = self._new()
        self._born = self._loop.time()
        self._inflight: Counter[int] = Counter()
        self._retired: dict[int, HttpClient] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def _new(self) -> HttpClient:
        return HttpClient(HOST, self.port, max_connections=512, timeout=ATTEMPT_TIMEOUT_S)

    @property
    def authority(self) -> str:
        """``host:port``, for pre-encoded requests."""
        return self._client.authority

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """One request on the current client."""
        if self._loop.time() - self._born >= self.rotate_s:
            old = self._client
            self._client, self._born = self._new(), self._loop.time()
            self._retired[id(old)] = old
            self._close_if_idle(old)
        client = self._client
        self._inflight[id(client)] += 1
        try:
            return await client.send(raw)
        finally:
            self._inflight[id(client)] -= 1
            self._close_if_idle(client)

    def _close_if_idle(self, client: HttpClient) -> None:
        if id(client) in self._retired and self._inflight[id(client)] <= 0:
            del self._retired[id(client)]
            del self._inflight[id(client)]
            task = asyncio.create_task(client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Close every client."""
        for client in [self._client, *self._retired.values()]:
            await client.close()
        self._retired.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)


@dataclass
class Attempt:
    """One try of one request: when (seconds since the start) and what came back."""

    sent: float
    ended: float
    outcome: str  # the status ("202", "503", ...) or cut / cut-mid-answer / timeout / refused


@dataclass
class Update:
    """One action a player completes: its ticket, its submissions, the final answer."""

    player: int
    action_type: str
    points: int
    action_id: str | None = None
    tickets: list[Attempt] = field(default_factory=list)
    attempts: list[Attempt] = field(default_factory=list)
    final: str | None = None  # the answer the client stopped at (or why it stopped)
    closing: bool = False

    @property
    def acknowledged(self) -> bool:
        """The client was told "done" (202, 200, or 409 "already completed")."""
        return self.final in ANSWERED


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HttpConnectionClosed):
        if str(exc).startswith("timed out"):
            return "timeout"
        return "cut-mid-answer" if exc.partial else "cut"
    if isinstance(exc, HttpProtocolError):
        return "protocol-error"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    return "cut"  # resets and other socket errors


class Load:
    """Players completing actions at a steady rate, retrying as the contract allows. Each player
    does one action at a time, as a real client does (the gateway's earning rules refuse a
    player who opens tickets faster); each new action goes to the next idle player."""

    def __init__(
        self,
        clock: Clock,
        gateways: Gateways,
        players: list[Player],
        catalog: dict[str, dict[str, int]],
        rate: float,
        rng: random.Random,
    ) -> None:
        self.clock, self.gateways, self.players = clock, gateways, players
        self.catalog, self.rate, self.rng = catalog, rate, rng
        self.updates: list[Update] = []
        self.attempts: Counter[str] = Counter()  # every update attempt's outcome
        self.ticket_attempts: Counter[str] = Counter()
        self.busy: set[int] = set()  # players with an action under way
        self.skipped = 0  # updates not started: every player was busy
        self.stop = asyncio.Event()
        self.tasks: set[asyncio.Task[None]] = set()
        self._next_player = 0
        # Quick actions more often than long ones, as players do: weight 1 / (duration + 0.25 s).
        self._types = sorted(catalog)
        self._weights = [1 / (catalog[t]["min_duration_ms"] + 250) for t in self._types]
        self._headers = [
            {"Authorization": f"Bearer {p.access_token}", "X-Forwarded-For": player_address(i)}
            for i, p in enumerate(players)
        ]
        self.started_at = 0.0
        self.stopped_at = 0.0

    async def drive(self) -> None:
        """Start updates open-loop at ``rate`` a second until :attr:`stop` is set."""
        self.started_at = self.clock.now()
        launched = 0
        while not self.stop.is_set():
            due = int((self.clock.now() - self.started_at) * self.rate) - launched - self.skipped
            for _ in range(max(0, due)):
                player = self._pick()
                if player is None:
                    self.skipped += 1
                    continue
                kind = self.rng.choices(self._types, self._weights)[0]
                update = Update(player, kind, self.catalog[kind]["points"])
                self.spawn(update)
                launched += 1
            await asyncio.sleep(0.01)
        self.stopped_at = self.clock.now()

    def _pick(self) -> int | None:
        for _ in range(len(self.players)):
            i = self._next_player
            self._next_player = (i + 1) % len(self.players)
            if i not in self.busy:
                return i
        return None

    def spawn(self, update: Update) -> asyncio.Task[None]:
        """Run one update in the background."""
        self.updates.append(update)
        self.busy.add(update.player)
        task = asyncio.create_task(self.complete(update))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _try(self, raw: bytes) -> tuple[str, int | None, bytes]:
        try:
            status, body = await self.gateways.send(raw)
        except (OSError, HttpProtocolError) as exc:
            return _describe(exc), None, b""
        return str(status), status, body

    async def complete(self, update: Update) -> None:
        """Ticket, wait the minimum duration, submit; retry each on 503/429/connection errors."""
        try:
            await self._complete(update)
        finally:
            self.busy.discard(update.player)

    async def _complete(self, update: Update) -> None:
        auth = self._headers[update.player]
        authority = self.gateways.authority

        def encode(path: str, doc: dict[str, str]) -> bytes:
            return encode_post(authority, path, json.dumps(doc).encode(), auth)

        first = self.clock.now()
        backoff = Backoff(base_s=0.2, cap_s=2.0)
        raw = encode("/api/actions", {"action_type": update.action_type})
        while True:
            sent = self.clock.now()
            outcome, status, body = await self._try(raw)
            update.tickets.append(Attempt(sent, self.clock.now(), outcome))
            self.ticket_attempts[outcome] += 1
            if status == 201:
                break
            if (status is None or status in RETRIED_STATUSES) and sent - first < GIVE_UP_S:
                await backoff.sleep()
                continue
            update.final = f"no ticket ({outcome})"
            return
        ticket = json.loads(body)
        update.action_id = ticket["action_id"]
        min_ms = self.catalog[update.action_type]["min_duration_ms"]
        await asyncio.sleep(min_ms / 1000 + 0.05)
        fields = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
        raw = encode("/api/scoreboard/update", fields)
        backoff.reset()
        first = self.clock.now()
        while True:
            sent = self.clock.now()
            outcome, status, body = await self._try(raw)
            update.attempts.append(Attempt(sent, self.clock.now(), outcome))
            self.attempts[outcome] += 1
            if outcome in ANSWERED:
                update.final = outcome
                return
            if (status is None or status in RETRIED_STATUSES) and sent - first < GIVE_UP_S:
                await backoff.sleep()
                continue
            update.final = outcome if status is not None else f"gave up ({outcome})"
            return

    async def finish(self, within_s: float) -> None:
        """Wait for the updates still in flight (each gives up by itself after GIVE_UP_S)."""
        if self.tasks:
            await asyncio.wait(list(self.tasks), timeout=within_s)
        for task in list(self.tasks):
            task.cancel()


# --------------------------------------------------------------------------- watchers


@dataclass
class Watch:
    """One WebSocket watcher's view: the newest top frame's version, and its reconnections."""

    version: int = -1
    connects: int = 0
    cuts: int = 0
    regressions: int = 0  # a frame with a lower version than the one before
    connected: bool = False

    def on_text(self, arrived: float, payload: bytes) -> None:
        """A frame mentioning "top"."""
        doc = json.loads(payload)
        if doc.get("type") == "top":
            version = int(doc["version"])
            if version < self.version:
                self.regressions += 1
            self.version = version


async def watch(w: Watch, port: int, address: str, stop: asyncio.Event) -> None:
    """Stay connected to /ws/scoreboard, reconnecting with jittered backoff when cut."""
    backoff = Backoff(base_s=0.1, cap_s=2.0)
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            try:
                ws = await WsWatcher.connect(
                    HOST,
                    port,
                    "/ws/scoreboard",
                    w.on_text,
                    headers={"X-Forwarded-For": address},
                    want=b'"top"',
                )
            except Exception:
                await backoff.sleep()
                continue
            w.connects += 1
            w.connected = True
            opened = time.monotonic()
            ended: list[asyncio.Future[Any]] = [ws.closed, stopping]
            await asyncio.wait(ended, return_when=asyncio.FIRST_COMPLETED)
            w.connected = False
            if stop.is_set():
                with contextlib.suppress(Exception):
                    await ws.close()
                return
            w.cuts += 1
            if time.monotonic() - opened > 2:
                backoff.reset()
            await backoff.sleep()
    finally:
        stopping.cancel()


# --------------------------------------------------------------------------- checks

PG_TOP = """
    SELECT user_id::text, score FROM scores WHERE version > 0
    ORDER BY score DESC, reached_at ASC, user_id ASC LIMIT 100
"""
# No user is deleted in a chaos run, so the board version is the sum of the users' versions.
PG_VERSION = "SELECT coalesce(sum(version), 0) FROM scores WHERE version > 0"


class Board:
    """Redis's board next to PostgreSQL's truth (common.keyspace names the Redis keys)."""

    def __init__(self, env: TestEnv) -> None:
        self.env = env
        self.keys = BoardKeys.for_prefix(env.redis_prefix)
        self.redis: aioredis.Redis = aioredis.from_url(env.redis_url, decode_responses=True)
        self.pg: asyncpg.Connection | None = None

    async def postgres(self) -> asyncpg.Connection:
        """A connection to the run's database (a new one if the last broke)."""
        if self.pg is None or self.pg.is_closed():
            self.pg = await asyncpg.connect(self.env.postgres_dsn)
        return self.pg

    async def pg_state(self) -> tuple[list[tuple[str, int]], int]:
        """PostgreSQL's top 100 and board version, from one snapshot."""
        conn = await self.postgres()
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            rows = await conn.fetch(PG_TOP)
            version = int(await conn.fetchval(PG_VERSION))
        return [(r["user_id"], int(r["score"])) for r in rows], version

    async def redis_state(self) -> tuple[list[tuple[str | None, int]], int | None]:
        """Redis's top 100 (user id by each member's entry) and board version; version None
        when the board is not built."""
        k = self.keys
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrevrange(k.rank, 0, 99, withscores=True)
            pipe.hgetall(k.users)
            pipe.mget([k.version, k.built])
            members, users, (version, built) = await pipe.execute()
        by_member = {value.split("|", 3)[2]: user_id for user_id, value in users.items()}
        top = [(by_member.get(member), int(score)) for member, score in members]
        return top, (int(version or 0) if built is not None else None)

    async def compare(self) -> dict[str, Any]:
        """Whether Redis's top 100 equals PostgreSQL's now (False if either cannot answer)."""
        try:
            pg_top, pg_version = await self.pg_state()
            redis_top, redis_version = await self.redis_state()
        except Exception as exc:
            if self.pg is not None:
                with contextlib.suppress(Exception):
                    await self.pg.close()
            self.pg = None
            return {"equal": False, "error": repr(exc)}
        return {
            "equal": redis_version is not None and pg_top == redis_top,
            "postgres_version": pg_version,
            "redis_version": redis_version,
        }

    async def converge(self, within_s: float) -> float | None:
        """Poll until the boards match; the seconds it took, or None."""
        start = time.monotonic()
        while time.monotonic() - start < within_s:
            if (await self.compare())["equal"]:
                return time.monotonic() - start
            await asyncio.sleep(0.1)
        return None

    async def close(self) -> None:
        """Close the connections."""
        await self.redis.aclose()
        if self.pg is not None:
            await self.pg.close()


async def read_topic(
    bootstrap: str,
    topic: str,
    partitions: int,
    *,
    want: set[str] | None = None,
    within_s: float = 60,
) -> list[Any]:
    """Every record of ``topic`` from the beginning, as a read_committed consumer sees it: up to
    the last stable offset of each partition. With ``want`` (action ids), keep reading until each
    has shown up and 3 s more for late copies, or until nothing new came for 15 s, or
    ``within_s``: an event may still be on its way from the outbox."""
    consumer = AIOKafkaConsumer(
        **kafka_test_auth().aiokafka(),  # admin: reads every topic
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        max_poll_records=5000,
    )
    await consumer.start()
    records: list[Any] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        seen: set[str] = set()
        start = time.monotonic()
        complete_at: float | None = None
        last_new = start
        while time.monotonic() - start < within_s:
            ends = await consumer.end_offsets(tps)  # read_committed: the last stable offsets
            positions = [await consumer.position(tp) for tp in tps]
            caught_up = all(pos >= ends[tp] for pos, tp in zip(positions, tps, strict=True))
            if caught_up:
                if want is None:
                    break
                if want <= seen:
                    complete_at = complete_at or time.monotonic()
                    if time.monotonic() - complete_at > 3:
                        break
                elif time.monotonic() - last_new > 15:
                    break
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                last_new = time.monotonic()
                for record in batch:
                    records.append(record)
                    seen.add(_action_of(record))
    finally:
        await consumer.stop()
    return records


def _action_of(record: Any) -> str:
    try:
        return str(json.loads(record.value)["data"]["action_id"])
    except (ValueError, KeyError, TypeError):
        return ""


async def closing_update(load: Load, board: Board) -> Update | None:
    """One more update by the player leading PostgreSQL's board: it changes the top 10, so the
    broadcaster sends every watcher a top frame carrying the final board version."""
    pg_top, _ = await board.pg_state()
    by_id = {p.user_id: i for i, p in enumerate(load.players)}
    if not pg_top or pg_top[0][0] not in by_id:
        return None
    kind = min(load.catalog, key=lambda k: load.catalog[k]["min_duration_ms"])
    update = Update(by_id[pg_top[0][0]], kind, load.catalog[kind]["points"], closing=True)
    await load.spawn(update)
    return update


# --------------------------------------------------------------------------- the verdict


def overlapping(attempt: Attempt, faults: Iterable[Fault]) -> Fault | None:
    """The fault whose window (kill to ready) overlaps the attempt, if any."""
    for fault in faults:
        start, end = fault.window()
        if attempt.sent <= end and attempt.ended >= start - 0.05:
            return fault
    return None


OUTCOME_WORDS: Final = {
    "cut": "cut off (connection closed before any answer)",
    "cut-mid-answer": "cut off mid-answer",
    "timeout": f"timed out (no answer in {ATTEMPT_TIMEOUT_S:.0f} s)",
    "refused": "refused (nothing listening)",
    "protocol-error": "answered something that is not HTTP",
}


def describe_attempt(attempt: Attempt, faults: list[Fault]) -> str:
    """``cut off ... by the gateway-2 kill`` / ``answered 503 during the kafka restart``."""
    words = OUTCOME_WORDS.get(attempt.outcome, f"answered {attempt.outcome}")
    fault = overlapping(attempt, faults)
    if fault is None:
        return f"{words}, no fault under way"
    if attempt.outcome.startswith("cut") and fault.target.startswith("gateway"):
        return f"{words} by the {fault.target} kill"
    return f"{words} during the {fault.target} {fault.verb}"


def classify_lost(
    update: Update,
    faults: list[Fault],
    commands: set[str],
    dead: dict[str, str],
    marker: str | None,
    ticket_left: bool,
) -> str:
    """Why an acknowledged update is not in PostgreSQL, in words a reader can act on."""
    attempts = update.attempts
    if len(attempts) == 1:
        story = f"answered {update.final} at the first attempt"
    else:
        story = (
            f"first attempt {describe_attempt(attempts[0], faults)}, "
            f"{'retry' if len(attempts) == 2 else f'{len(attempts) - 1} retries, the last'} "
            f"answered {update.final}"
        )
    assert update.action_id is not None
    if update.action_id in dead:
        kafka = f"command dead-lettered ({dead[update.action_id]})"
    elif update.action_id in commands:
        kafka = "command in Kafka but never applied"
    else:
        kafka = "command never reached Kafka"
    if marker is None:
        state = "no done marker in Redis"
    elif marker.startswith("c:"):
        state = "done marker still a claim (c:), never confirmed"
    elif marker == "1":
        state = "done marker says applied (1)"
    else:
        state = f"done marker {marker!r}"
    if ticket_left:
        state += ", ticket still there"
    return f"{story}; {kafka}; {state}"


def latest_fault_before(at: float, faults: list[Fault]) -> Fault | None:
    """The last fault that started before ``at``."""
    before = [f for f in faults if f.killed_at is not None and f.killed_at <= at]
    return before[-1] if before else None


@dataclass
class Findings:
    """The measured outcome, before it is formatted."""

    summary: dict[str, Any]
    failures: list[str]


async def evaluate(
    clock: Clock,
    env: TestEnv,
    load: Load,
    faults: list[Fault],
    board: Board,
    convergence: dict[str, Any],
    watchers: dict[str, Any],
) -> Findings:
    """Compare what clients were told with PostgreSQL, Kafka and Redis."""
    topics = Topics(env.topic_prefix)
    partitions = {
        t.name: t.partitions for t in topic_specs(env.topic_prefix, partitions=PARTITIONS)
    }

    async def read(topic: str, want: set[str] | None = None) -> list[Any]:
        return await read_topic(env.kafka_bootstrap, topic, partitions[topic], want=want)

    conn = await board.postgres()
    actions = await conn.fetch("SELECT action_id::text, user_id::text, points FROM actions")
    scores = await conn.fetch("SELECT user_id::text, score, version FROM scores")
    applied = {r["action_id"]: r for r in actions}
    updates = [u for u in load.updates if u.action_id is not None]
    ours = {u.action_id: u for u in updates}
    acknowledged = [u for u in updates if u.acknowledged]
    lost = [u for u in acknowledged if u.action_id not in applied]

    # Doubled: a score that is not the sum of its applied actions, a version not their count.
    sums: dict[str, int] = defaultdict(int)
    counts: Counter[str] = Counter()
    for r in actions:
        sums[r["user_id"]] += int(r["points"])
        counts[r["user_id"]] += 1
    doubled = [
        {
            "user_id": r["user_id"],
            "score": int(r["score"]),
            "sum_of_applied": sums[r["user_id"]],
            "version": int(r["version"]),
            "applied_actions": counts[r["user_id"]],
        }
        for r in scores
        if int(r["score"]) != sums[r["user_id"]] or int(r["version"]) != counts[r["user_id"]]
    ]
    wrong_points = sum(
        1 for a, r in applied.items() if a in ours and int(r["points"]) != ours[a].points
    )
    unknown_actions = sum(1 for a in applied if a not in ours)

    # ScoreChanged: every applied action exactly once, as read_committed consumers see it.
    changed = await read(topics.changed, set(applied))
    copies: dict[str, list[Any]] = defaultdict(list)
    for record in changed:
        copies[_action_of(record)].append(record)
    missing_ids = [a for a in applied if a not in copies]
    doubled_ids = {a: recs for a, recs in copies.items() if len(recs) > 1 and a in applied}
    extra_copies = sum(len(recs) - 1 for recs in doubled_ids.values())
    unexpected_events = sum(len(recs) for a, recs in copies.items() if a not in applied)
    doubled_causes: Counter[str] = Counter()
    doubled_examples: list[dict[str, Any]] = []
    for action_id, recs in doubled_ids.items():
        recs.sort(key=lambda r: r.timestamp)
        for rec in recs[1:]:
            at = clock.of_wall(rec.timestamp / 1000)
            fault = latest_fault_before(at, faults)
            first_at = clock.of_wall(recs[0].timestamp / 1000)
            cause = (
                f"extra copy published after {fault.name}"
                if fault is not None
                else "extra copy published before any fault"
            )
            doubled_causes[cause] += 1
            if len(doubled_examples) < 10:
                doubled_examples.append(
                    {
                        "action_id": action_id,
                        "first_s": round(first_at, 2),
                        "copy_s": round(at, 2),
                        "partitions_offsets": [(r.partition, r.offset) for r in recs],
                        "cause": cause,
                    }
                )
    missing_causes = await _classify_missing(conn, missing_ids)

    # Why each lost update was lost: the client's story, Kafka's and Redis's.
    lost_causes: Counter[str] = Counter()
    lost_examples: list[dict[str, Any]] = []
    if lost:
        command_ids = {_action_of(r) for r in await read(topics.commands)}
        dead = {
            _action_of(r): dict((k, v.decode(errors="replace")) for k, v in r.headers).get(
                "x-error", "?"
            )
            for r in await read(topics.dlq)
        }
        for update in lost:
            assert update.action_id is not None
            value = await board.redis.get(done_key(env.redis_prefix, update.action_id))
            marker = None if value is None else str(value)
            ticket_left = bool(
                await board.redis.exists(ticket_key(env.redis_prefix, update.action_id))
            )
            cause = classify_lost(update, faults, command_ids, dead, marker, ticket_left)
            lost_causes[cause] += 1
            if len(lost_examples) < 20:
                lost_examples.append(
                    {
                        "action_id": update.action_id,
                        "attempts": [asdict(a) for a in update.attempts],
                        "cause": cause,
                    }
                )

    finals = Counter(u.final or "unfinished" for u in load.updates)
    elapsed = max(load.stopped_at - load.started_at, 1e-9)
    regular = [u for u in load.updates if not u.closing]
    summary: dict[str, Any] = {
        "load": {
            "seconds": round(elapsed, 1),
            "updates_started": len(regular),
            "achieved_rate": round(len(regular) / elapsed, 1),
            "skipped_ticks": load.skipped,
            "final_answers": dict(finals.most_common()),
            "update_attempts": dict(load.attempts.most_common()),
            "ticket_attempts": dict(load.ticket_attempts.most_common()),
            "retried_updates": sum(1 for u in updates if len(u.attempts) > 1),
        },
        "acknowledged": len(acknowledged),
        "acknowledged_by": dict(Counter(u.final for u in acknowledged).most_common()),
        "applied": len(applied),
        "applied_not_acknowledged": sum(
            1 for a in applied if a in ours and not ours[a].acknowledged
        ),
        "lost": len(lost),
        "lost_by_cause": dict(lost_causes.most_common()),
        "lost_examples": lost_examples,
        "doubled": len(doubled),
        "doubled_examples": doubled[:10],
        "points_differing_from_catalog": wrong_points,
        "applied_actions_nobody_submitted": unknown_actions,
        "events": {
            "read": len(changed),
            "missing": len(missing_ids),
            "missing_by_cause": missing_causes,
            "doubled": extra_copies,
            "doubled_actions": len(doubled_ids),
            "doubled_by_cause": dict(doubled_causes.most_common()),
            "doubled_examples": doubled_examples,
            "unexpected": unexpected_events,
        },
        "board": convergence,
        "watchers": watchers,
    }
    failures = [
        f"{name} {value}"
        for name, value in (
            ("lost", len(lost)),
            ("doubled", len(doubled)),
            ("events missing", len(missing_ids)),
            ("events doubled", extra_copies),
        )
        if value
    ]
    if not convergence.get("converged"):
        failures.append("board not converged")
    return Findings(summary, failures)


async def _classify_missing(conn: asyncpg.Connection, missing: list[str]) -> dict[str, int]:
    """An applied action without a ScoreChanged: what its outbox row says."""
    if not missing:
        return {}
    try:
        rows = await conn.fetch(
            """SELECT convert_from(payload, 'UTF8')::jsonb #>> '{data,action_id}' AS action_id,
                      sent_at IS NOT NULL AS sent
               FROM outbox
               WHERE convert_from(payload, 'UTF8')::jsonb #>> '{data,action_id}' = ANY($1)""",
            missing,
        )
    except Exception as exc:  # the outbox's shape is the score service's business
        return {f"outbox not readable: {exc!r}": len(missing)}
    sent = {r["action_id"]: r["sent"] for r in rows}
    causes: Counter[str] = Counter()
    for action_id in missing:
        if action_id not in sent:
            causes["no outbox row"] += 1
        elif sent[action_id]:
            causes["outbox row marked sent, no event visible to read_committed"] += 1
        else:
            causes["outbox row never sent"] += 1
    return dict(causes)


# --------------------------------------------------------------------------- the run


@dataclass
class Options:
    """What to run."""

    seconds: float
    rate: float
    players: int
    faults: list[str]
    watchers: int
    gateways: int
    seed: int
    out: Path
    settle_s: float = 60.0


def code_version() -> dict[str, Any]:
    """The commit measured, and whether services/ or libs/ differ from it."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "services", "libs"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {"commit": os.environ.get("SCOREBOARD_CHAOS_COMMIT", "unknown"), "dirty": None}
    return {"commit": head, "dirty": bool(changed)}


async def sign_up(gateway: str, count: int) -> list[Player]:
    """Register and log in ``count`` players through the gateway, each from its own address, a
    few at a time (auth's password hashing is the slow part); a failed sign-up (auth sheds load
    with 503 and 429) is tried again, under a new name in case the registration went through."""
    tag = uuid.uuid4().hex[:6]
    gate = asyncio.Semaphore(8)
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(i: int) -> Player:
        headers = {"X-Forwarded-For": player_address(i)}
        async with gate, aiohttp.ClientSession(timeout=timeout, headers=headers) as http:
            backoff = Backoff(base_s=0.5, cap_s=5.0)
            for attempt in range(12):
                try:
                    return await register_and_login(http, gateway, f"chaos{tag}{i}x{attempt}")
                except (AssertionError, aiohttp.ClientError, TimeoutError):
                    await backoff.sleep()
            raise RuntimeError(f"could not sign up player {i}")

    return await asyncio.gather(*(one(i) for i in range(count)))


async def action_catalog(gateway: str) -> dict[str, dict[str, int]]:
    """The gateway's catalog: points and minimum duration of each action type a player may do
    over and over (types capped per hour or per day, like daily_login, are left out)."""
    async with aiohttp.ClientSession() as http, http.get(f"{gateway}/api/actions/types") as resp:
        types = await resp.json()
    return {
        t["action_type"]: {"points": t["points"], "min_duration_ms": t["min_duration_ms"]}
        for t in types
        if t.get("per_hour") is None and t.get("per_day") is None
    }


class Progress:
    """A line every ``every`` seconds: rates, answers, in flight, watchers."""

    def __init__(self, clock: Clock, load: Load, watches: list[Watch]) -> None:
        self.clock, self.load, self.watches = clock, load, watches

    async def run(self, every: float = 5.0) -> None:
        """Print until cancelled."""
        last_started, last_attempts = 0, Counter[str]()
        last_acked = 0
        while True:
            await asyncio.sleep(every)
            started = len(self.load.updates)
            acked = sum(1 for u in self.load.updates if u.acknowledged)
            window = self.load.attempts - last_attempts
            answers = " ".join(f"{k}x{v}" for k, v in sorted(window.items()))
            connected = sum(1 for w in self.watches if w.connected)
            say(
                f"{self.clock.stamp()} {(started - last_started) / every:5.0f}/s started, "
                f"{(acked - last_acked) / every:5.0f}/s acknowledged | attempts {answers or '-'} "
                f"| in flight {len(self.load.tasks)} | ws {connected}/{len(self.watches)}"
            )
            last_started, last_attempts, last_acked = started, Counter(self.load.attempts), acked


class Run:
    """One chaos run: the private stack, the services, the load, the faults, the verdict."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
        self.dir = CHAOS_DIR / self.run_id
        self.stack = Stack(self.dir)
        self.clock = Clock()
        self.version = code_version()
        self.system: System | None = None
        self.gateways: Gateways | None = None
        self.board: Board | None = None
        self.background: list[asyncio.Task[None]] = []
        self.watch_stop = asyncio.Event()

    async def start(self) -> tuple[TestEnv, list[Player], dict[str, dict[str, int]]]:
        """Servers, a migrated database with topics, the services, signed-up players."""
        reap_leftovers()
        self.dir.mkdir(parents=True)
        (self.dir / "owner.pid").write_text(str(os.getpid()))
        harness.LOGS = self.dir / "logs"  # this run's service logs, not test-artifacts/logs
        opts = self.opts
        say(
            f"chaos {self.run_id}: commit {self.version['commit']}"
            f"{' (services/libs modified)' if self.version['dirty'] else ''}; "
            f"{opts.seconds:g}s at {opts.rate:g} updates/s, {opts.players} players, "
            f"{len(opts.faults)} faults: {', '.join(opts.faults)}"
        )
        say(f"private servers {self.stack.ports}; state and logs in {self.dir}")
        await asyncio.to_thread(self.stack.start)
        env = await create_test_env(self.stack.infra, partitions=PARTITIONS)
        self.system = await asyncio.to_thread(
            harness.start_system, env, dict(GATEWAY_ENV), gateways=opts.gateways
        )
        catalog = await action_catalog(self.system.gateway)
        players = await sign_up(self.system.gateway, opts.players)
        say(f"system up: gateway {self.system.gateway}, {len(players)} players signed up")
        return env, players, catalog

    async def measure(
        self, env: TestEnv, players: list[Player], catalog: dict[str, dict[str, int]]
    ) -> tuple[int, dict[str, Any]]:
        """The load under faults, then the checks."""
        assert self.system is not None
        opts, clock = self.opts, self.clock
        port = self.system.services["gateway"].port
        self.gateways = Gateways(port)
        load = Load(clock, self.gateways, players, catalog, opts.rate, random.Random(opts.seed))
        faults = fault_plan(opts.faults, opts.seconds)
        controller = Controller(clock, self.stack, self.system, self.dir, faults)
        controller.record_pids()
        watches = [Watch() for _ in range(opts.watchers)]
        self.background += [
            asyncio.create_task(watch(w, port, watcher_address(i), self.watch_stop))
            for i, w in enumerate(watches)
        ]
        for _ in range(100):  # let the watchers connect before the clock starts
            if all(w.connected for w in watches):
                break
            await asyncio.sleep(0.1)

        clock.reset()
        say(f"{clock.stamp()} load starts")
        driver = asyncio.create_task(load.drive())
        self.background += [
            asyncio.create_task(controller.supervise()),
            asyncio.create_task(Progress(clock, load, watches).run()),
        ]
        await controller.run()
        last_ready = max((f.ready_at or f.killed_at or 0.0 for f in faults), default=0.0)
        tail = max(3.0, 0.05 * opts.seconds)
        await asyncio.sleep(max(opts.seconds, last_ready + tail) - clock.now())
        load.stop.set()
        await driver
        load_stopped = clock.now()
        say(f"{clock.stamp()} load stops; {len(load.tasks)} updates still in flight")
        await load.finish(within_s=GIVE_UP_S + 2 * ATTEMPT_TIMEOUT_S)
        quiet_from = clock.now()

        # From the last answer on: how long until Redis's top 100 is PostgreSQL's?
        self.board = board = Board(env)
        converge_s = await board.converge(within_s=opts.settle_s)
        say(
            f"{clock.stamp()} Redis's top 100 "
            + ("equals PostgreSQL's" if converge_s is not None else "still differs")
        )
        await _wait_applied(board, load, opts.settle_s)

        # The closing update, then the watchers: do they all show the final version?
        closing = await closing_update(load, board)
        await _wait_applied(board, load, 20)
        final = await board.compare()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            final = await board.compare()
            if final["equal"] and all(w.version == final["postgres_version"] for w in watches):
                break
            await asyncio.sleep(0.2)
        self.watch_stop.set()
        pg_version = final.get("postgres_version")
        watchers = {
            "count": len(watches),
            "at_final_version": sum(1 for w in watches if w.version == pg_version),
            "final_version": pg_version,
            "versions_shown": sorted({w.version for w in watches}),
            "reconnects": sum(w.cuts for w in watches),
            "version_went_back": sum(w.regressions for w in watches),
            "closing_update": closing.final if closing else None,
        }
        convergence = {
            "converged": converge_s is not None and bool(final["equal"]),
            "converge_s": round(converge_s, 2) if converge_s is not None else None,
            "still_equal_at_end": bool(final["equal"]),
            "postgres_version": pg_version,
            "redis_version": final.get("redis_version"),
            "last_fault_ready_s": round(last_ready, 1),
            "load_stopped_s": round(load_stopped, 1),
            "last_answer_s": round(quiet_from, 1),
        }
        findings = await evaluate(clock, env, load, faults, board, convergence, watchers)
        summary = {
            "program": "chaos",
            "run": self.run_id,
            **self.version,
            "settings": {
                "seconds": opts.seconds,
                "rate": opts.rate,
                "players": opts.players,
                "gateways": opts.gateways,
                "watchers": opts.watchers,
                "seed": opts.seed,
                "faults": opts.faults,
            },
            "faults": [
                _fault_row(f, load.updates, nxt.killed_at)
                for f, nxt in zip(faults, [*faults[1:], Fault(0, "", 0.0)], strict=True)
            ],
            "unplanned_exits": controller.unplanned,
            **findings.summary,
            "verdict": "pass" if not findings.failures else "fail",
            "failures": findings.failures,
        }
        if any(f.error for f in faults):
            summary["harness_note"] = "a fault did not recover; see faults[].error"
        return (EXIT_FAIL if findings.failures else EXIT_PASS), summary

    async def stop(self) -> None:
        """Stop everything this run started; keep only its logs."""
        self.watch_stop.set()
        for task in self.background:
            task.cancel()
        await asyncio.gather(*self.background, return_exceptions=True)
        if self.gateways is not None:
            await self.gateways.close()
        if self.board is not None:
            with contextlib.suppress(Exception):
                await self.board.close()
        if self.system is not None:
            await asyncio.to_thread(self.system.stop)
        await asyncio.to_thread(self.stack.stop)
        for name in ("postgres", "redis", "kafka"):
            shutil.rmtree(self.dir / name, ignore_errors=True)
        (self.dir / "owner.pid").unlink(missing_ok=True)


AFTER_S: Final = 10.0  # how long after a recovery failed requests still count against it


def _fault_row(f: Fault, updates: list[Update], next_at: float | None) -> dict[str, Any]:
    """A fault, with what clients got while it was under way and in the 10 s after it was back
    (or until the next fault): a dependency that comes back should serve without errors."""
    down = None
    if f.ready_at is not None and f.killed_at is not None:
        down = round(f.ready_at - f.killed_at, 1)
    at = round(f.killed_at, 1) if f.killed_at is not None else None
    start, end = f.window()
    after_end = min(end + AFTER_S, next_at if next_at is not None else float("inf"))
    during: Counter[str] = Counter()
    after: Counter[str] = Counter()
    for u in updates:
        for kind, attempts in (("ticket", u.tickets), ("update", u.attempts)):
            for a in attempts:
                if start <= a.sent <= end:
                    during[f"{kind} {a.outcome}"] += 1
                elif end < a.sent and a.ended < after_end and a.outcome not in (*ANSWERED, "201"):
                    after[f"{kind} {a.outcome}"] += 1
    return {
        "n": f.n,
        "target": f.target,
        "action": f.verb,
        "at_s": at,
        "down_s": down,
        "error": f.error,
        "answers_while_down": dict(sorted(during.items())),
        "failures_after_back": dict(sorted(after.items())),
    }


async def chaos(opts: Options) -> tuple[int, dict[str, Any]]:
    """Run the whole thing; the exit status and the summary."""
    run = Run(opts)
    try:
        try:
            env, players, catalog = await run.start()
        except Exception as exc:
            traceback.print_exc()
            say(f"harness error while starting: {exc!r}")
            return EXIT_HARNESS, {"error": f"starting: {exc!r}"}
        try:
            return await run.measure(env, players, catalog)
        except Exception as exc:
            traceback.print_exc()
            say(f"harness error while measuring: {exc!r}")
            return EXIT_HARNESS, {"error": f"measuring: {exc!r}"}
    finally:
        await run.stop()


async def _wait_applied(board: Board, load: Load, within_s: float) -> None:
    """Until every acknowledged update is applied, or the applied count stops moving for 10 s."""
    acked = {u.action_id for u in load.updates if u.acknowledged}
    deadline = time.monotonic() + within_s
    last, still_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        try:
            conn = await board.postgres()
            applied = {
                r["action_id"] for r in await conn.fetch("SELECT action_id::text FROM actions")
            }
        except Exception:
            board.pg = None
            await asyncio.sleep(0.5)
            continue
        if acked <= applied:
            return
        if len(applied) != last:
            last, still_since = len(applied), time.monotonic()
        elif time.monotonic() - still_since > 10:
            return
        await asyncio.sleep(0.5)


def report(summary: dict[str, Any]) -> str:
    """The closing block, for people."""
    if "error" in summary and "load" not in summary:
        return f"== chaos: harness error: {summary['error']}"
    s, ev, b, w = summary, summary["events"], summary["board"], summary["watchers"]
    settings = s["settings"]
    lines = [
        "",
        f"== chaos summary: commit {s['commit']}{' + local changes' if s['dirty'] else ''}, "
        f"{s['load']['seconds']:.0f} s at {s['load']['achieved_rate']:.0f} updates/s "
        f"(asked {settings['rate']:g}; {s['load']['skipped_ticks']} not started while every "
        f"player was busy), {settings['players']} players, "
        f"{len(s['faults'])} faults",
    ]
    for f in s["faults"]:
        down = f"down {f['down_s']:.1f} s" if f["down_s"] is not None else f"error {f['error']}"
        after = ", ".join(f"{k} x{v}" for k, v in f["failures_after_back"].items())
        lines.append(
            f"   fault {f['n']}: {f['target']:<11} {f['action']:<14} at {f['at_s']} s, {down}"
            f"; failed requests in the {AFTER_S:.0f} s after: {after or 'none'}"
        )
    for u in s["unplanned_exits"]:
        lines.append(f"   exited by itself: {u['service']} at {u['at_s']} s ({u.get('status')})")
    acked_by = ", ".join(f"{k}: {v}" for k, v in s["acknowledged_by"].items())
    lines += [
        f"acknowledged      {s['acknowledged']:>7}   ({acked_by})",
        f"applied           {s['applied']:>7}   "
        f"({s['applied_not_acknowledged']} of them never acknowledged)",
        f"lost              {s['lost']:>7}   acknowledged, not applied",
    ]
    lines += [f"    {n:>5}  {cause}" for cause, n in s["lost_by_cause"].items()]
    lines.append(
        f"doubled           {s['doubled']:>7}   scores != sum of applied, versions != their count"
    )
    lines.append(
        f"events missing    {ev['missing']:>7}   applied, no ScoreChanged (read_committed)"
    )
    lines += [f"    {n:>5}  {cause}" for cause, n in ev["missing_by_cause"].items()]
    lines.append(
        f"events doubled    {ev['doubled']:>7}   extra copies, of {ev['doubled_actions']} actions "
        f"({ev['read']} events read)"
    )
    lines += [f"    {n:>5}  {cause}" for cause, n in ev["doubled_by_cause"].items()]
    if b["converged"]:
        conv = (
            f"yes, {b['converge_s']:.1f} s after the last client's answer (last fault back at "
            f"{b['last_fault_ready_s']} s, load stopped at {b['load_stopped_s']} s, last answer "
            f"at {b['last_answer_s']} s)"
        )
    else:
        conv = f"NO (Redis version {b['redis_version']}, PostgreSQL {b['postgres_version']})"
    lines.append(f"board converged   {conv}")
    lines.append(
        f"watchers          {w['at_final_version']}/{w['count']} at the final version "
        f"{w['final_version']} ({w['reconnects']} reconnects)"
    )
    verdict = "PASS" if s["verdict"] == "pass" else f"FAIL ({', '.join(s['failures'])})"
    lines.append(f"verdict           {verdict}")
    return "\n".join(lines)


def write_results(summary: dict[str, Any], out: Path) -> Path:
    """bench/results/chaos-<run>.json, and chaos.json (the newest)."""
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary, indent=2) + "\n"
    path = out / f"chaos-{summary.get('run', 'failed')}.json"
    path.write_text(text)
    (out / "chaos.json").write_text(text)
    return path


def parse_faults(value: str) -> list[str]:
    """``9`` (the first nine of the default order, cycling) or ``gateway,kafka,...``."""
    if value.isdigit():
        n = int(value)
        return [DEFAULT_FAULTS[i % len(DEFAULT_FAULTS)] for i in range(n)]
    names = [v.strip() for v in value.split(",") if v.strip()]
    return names


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run, print and write the summary; returns the exit status."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=60, help="load duration (default 60)")
    parser.add_argument("--rate", type=float, default=200, help="updates a second (default 200)")
    parser.add_argument("--players", type=int, default=150, help="players (default 150)")
    parser.add_argument(
        "--faults",
        type=parse_faults,
        default=list(DEFAULT_FAULTS),
        help="a number (default 9: " + ",".join(DEFAULT_FAULTS) + ") or a comma-separated list",
    )
    parser.add_argument("--watchers", type=int, default=20, help="WebSocket watchers (20)")
    parser.add_argument("--gateways", type=int, default=2, help="gateway processes (2)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (action types)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args(argv)
    targets = {"gateway", "score", "broadcaster", *SERVERS} | {
        f"gateway-{n}" for n in range(2, args.gateways + 1)
    }
    unknown = [f for f in args.faults if f not in targets]
    if unknown:
        parser.error(f"unknown fault target(s) {unknown}; known: {sorted(targets)}")
    opts = Options(
        seconds=args.seconds,
        rate=args.rate,
        players=args.players,
        faults=args.faults,
        watchers=args.watchers,
        gateways=args.gateways,
        seed=args.seed if args.seed is not None else random.randrange(1 << 30),
        out=args.out,
    )
    status, summary = asyncio.run(_main(opts))
    say(report(summary))
    if "run" in summary:
        say(f"wrote {write_results(summary, opts.out)}")
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return status


async def _main(opts: Options) -> tuple[int, dict[str, Any]]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)  # clean up like on Ctrl-C
    try:
        return await chaos(opts)
    except asyncio.CancelledError:
        return EXIT_HARNESS, {"error": "interrupted"}


if __name__ == "__main__":
    sys.exit(main())
