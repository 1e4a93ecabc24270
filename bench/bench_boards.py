"""Boards at scale: reads of a 1,000,000-player board, and 100 boards x 4 windows applied.

    uv run python bench/bench_boards.py [--players 1000000] [--requests 3000] [--concurrency 16]
        [--boards 100] [--apply-users 10000] [--apply-commands 4000] [--repeats 2]
        [--rate 1000] [--seconds 10] [--topology own,all] [--short] [--skip-reads] [--skip-apply]

Two parts, each on a fresh slice of the local servers (testkit.env: its own database, topics and
Redis prefix, all dropped at the end, so the shared test database never holds the million rows)
with the four services running as processes (tests.e2e.harness.start_system):

1. **Reads of one big board.** ``--players`` players are written to PostgreSQL in bulk (users
   rows and ``board_scores`` rows of one board's all-time window, generated server side by
   ``INSERT ... SELECT generate_series``), three of them registered through the API first so
   they can read their own place (``me``, with a JWT): one at rank 1, one in the middle, one at
   the bottom. The first read finds the period unbuilt in Redis and the broadcaster rebuilds it
   from PostgreSQL (its own code path, timed here until the ``built`` marker appears). Redis
   memory per entry: ``MEMORY USAGE`` of the period's keys (SAMPLES 0: every element) and the
   ``INFO`` ``used_memory`` delta, over the entries. Then, at the gateway (real HTTP, keep-alive
   connections, ``--concurrency`` in flight, closed loop, ``--requests`` per kind), p50 and p99
   of: top (limit 100 and 1,000), a deep page (a cursor at a random rank in the lower half),
   around-me (n=5) for each of the three players, and a rank (``/users/{id}``, random players).
   The gateway's micro-cache (gateway.board_cache) is off (TTL 0), so every request reaches the
   broadcaster and Redis: what is measured is the read path, not the cache.
2. **Many boards applied.** ``--boards`` boards (the default one and ``--boards - 1`` more),
   each with the all-time, daily, weekly and monthly windows, and ``--boards`` action types
   (``mode_000``.., one price; the run's catalog, given to the score service), the commands
   spread evenly over them. The extra boards' feeds, ``--topology``:
   - ``own``: board ``mode-NNN`` is fed by ``mode_NNN`` alone (a board per game mode or event;
     ``mode_000`` counts on the default board only): a command counts in its board's 4 periods
     and the default board's 3 (its all-time window is the ``scores`` table).
   - ``all``: every board is fed by every type: a command counts in 4 x boards - 1 periods.
   Each against the same run's default board alone (the extra boards retired; same commands,
   same catalog):
   - *store throughput*: the score service's own store (score.store.ScoreStore) applying the same
     commands in batches of ``--batch``, the configurations alternating ``--repeats`` times
     (medians), board_scores checked after each run (its rows and entries are the commands'
     distinct (board, window, period, player) keys and board periods). Target: ratio >= 0.5.
   - *end to end at ``--rate``*: signed commands produced to Kafka as the gateway does, open
     loop, for ``--seconds``, applied by the running score service, published by its relay and
     applied by the broadcaster. End to end is from the produce call to (a) the command's
     ScoreChanged read from Kafka and (b) the broadcaster's AppliedNotice on Redis (the main
     board moved; its period boards are applied right after it, in the same chunk). p50/p99 and
     the achieved rate (commands / first produce to last ScoreChanged). ``all`` also runs at
     ``--sustainable-rate``, and at ``--rate`` last (its backlog is abandoned).

Prints a table (stderr) and one JSON object (the last stdout line), also written to
bench/results/boards.json. ``--short`` is a quick run (10,000 players, a few hundred requests,
10 boards, 2 s at 200/s); bench/tests/test_bench_boards.py runs it tinier still.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import aiohttp
import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_score_apply import make_commands
from bench.cpu import CpuMeter
from bench.loadgen import HttpClient, HttpConnectionClosed, HttpProtocolError
from common.boards import (
    DEFAULT_BOARD,
    BoardDefinition,
    Catalog,
    Window,
    load_catalog,
    save_definitions,
)
from common.catalog import ActionSpec
from common.command_signing import CommandSigner
from common.events import ScoreCommand, ScoreCommandEvent, Topics, encode
from common.kafka import local_kafka_password, make_producer
from common.kafka_access import GATEWAY
from common.keyspace import PeriodBoardKeys, applied_channel
from common.runner import tune_gc
from common.tracing import inject_headers
from score.commands import Command
from score.settings import Settings as ScoreSettings
from score.store import ScoreStore
from testkit.env import LOCAL_INFRA, Infra, TestEnv, create_test_env, drop_test_env
from tests.e2e.harness import Player, System, register_and_login, start_system

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
HOST: Final = "127.0.0.1"
BIG_BOARD: Final = "bench-1m"
ALL_TIME: Final[Window] = "all-time"
APPLY_WINDOWS: Final[tuple[Window, ...]] = ("all-time", "daily", "weekly", "monthly")
UNLIMITED: Final = "1000000"
LIFTED: Final = (
    "READS_RATE_PER_ADDRESS",
    "READS_BURST_PER_ADDRESS",
    "AUTH_RATE_PER_ADDRESS",
    "AUTH_BURST_PER_ADDRESS",
    "REGISTER_RATE_PER_ADDRESS",
    "REGISTER_BURST_PER_ADDRESS",
)
# Small reads (one screen of a game's UI: a top 100, the players around me, my rank) should feel
# instant next to a frame of network: p99 <= 50 ms at the API on this machine. A 1,000-entry
# page is ten times the work and the bytes (~100 KB of JSON): p99 <= 250 ms.
READ_TARGETS_P99_MS: Final = {
    "top_100": 50.0,
    "top_1000": 250.0,
    "deep_page_100": 50.0,
    "around_me_rank1": 50.0,
    "around_me_middle": 50.0,
    "around_me_bottom": 50.0,
    "rank_random_player": 50.0,
}
APPLY_RATIO_TARGET: Final = 0.5
# Part 2's configurations: the baseline (the default board alone, as shipped) and the
# topologies of the extra boards (board_definitions).
SINGLE: Final = "default_alone"
TOPOLOGIES: Final = ("own", "all")
MODE_POINTS: Final = 10  # every action type of part 2 is worth the same
E2E_P99_TARGET_MS: Final = 250.0  # bench_e2e_latency's target for click to screen at 1,000/s


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) by nearest rank; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def machine() -> dict[str, Any]:
    """Cores, CPU model and load averages of this machine (it is shared: say how busy)."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cores": os.cpu_count(), "cpu_model": model, "load_average": list(os.getloadavg())}


def get_request(path: str, port: int, token: str | None = None) -> bytes:
    """A pre-encoded keep-alive GET (with a bearer token when given)."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}Connection: keep-alive\r\n\r\n"
    ).encode()


def cursor_for(board: str, window: str, period: str, score: int, member: str) -> str:
    """A page cursor after (score, member): broadcaster.board_handlers.encode_cursor's format."""
    text = f"c1|{board}|{window}|{period}|{score}|{member}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


# -- part 1: one big board ---------------------------------------------------------------------


@dataclass
class ReadTrial:
    """One kind of read: its latencies and statuses."""

    kind: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cores: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Rate, p50/p99 and the statuses; the target next to the p99."""
        ok = self.statuses.get("200", 0)
        return {
            "kind": self.kind,
            "requests": sum(self.statuses.values()),
            "rate_per_s": round(ok / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": _round(percentile(self.latencies_ms, 50)),
            "p99_ms": _round(percentile(self.latencies_ms, 99)),
            "target_p99_ms": READ_TARGETS_P99_MS.get(self.kind),
            "statuses": self.statuses,
            "cores": self.cores,
            # CPU per answered read, per process group: steadier than latency on a busy machine.
            "cpu_ms_per_read": {
                k: round(v * self.seconds * 1000 / ok, 2) for k, v in self.cores.items() if ok
            },
        }


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


async def closed_loop(
    client: HttpClient,
    requests: Sequence[bytes],
    concurrency: int,
    trial: ReadTrial,
    pids: dict[int, str],
) -> None:
    """``concurrency`` workers each send the next request when their last one is answered, until
    every request of ``requests`` is sent (after a warm-up of one each, not counted)."""
    await asyncio.gather(*(client.send(requests[i % len(requests)]) for i in range(concurrency)))
    queue = iter(requests)

    async def worker() -> None:
        for raw in queue:
            sent = time.perf_counter()
            try:
                status, _, done = await client.send_timed(raw)
            except (HttpConnectionClosed, HttpProtocolError) as exc:
                key = f"error:{type(exc).__name__}"
                trial.statuses[key] = trial.statuses.get(key, 0) + 1
                continue
            trial.statuses[str(status)] = trial.statuses.get(str(status), 0) + 1
            trial.latencies_ms.append((done - sent) * 1000)

    meter = CpuMeter(pids)
    meter.start()
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    trial.seconds = time.perf_counter() - start
    used = meter.stop()
    wall = used.pop("wall", trial.seconds) or trial.seconds
    trial.cores = {k: round(v / wall, 2) for k, v in used.items() if k != "total"}


async def fill_big_board(dsn: str, players: int, ranked: Sequence[Player]) -> dict[str, Any]:
    """``players`` entries of the big board's all-time window in PostgreSQL, as its owner.

    The ``ranked`` players (registered through the API) take rank 1, the middle and the bottom;
    the others get random scores from 1 to 1,000,000 (many ties, broken by reached_at) and are
    generated server side. Returns the seconds it took and the three players' scores.
    """
    others = players - len(ranked)
    conn = await asyncpg.connect(dsn)
    try:
        await save_definitions(
            conn,
            [BoardDefinition(board_id=BIG_BOARD, title="One million players", windows=(ALL_TIME,))],
        )
        start = time.perf_counter()
        async with conn.transaction():
            # The board's entries reference users rows (ON DELETE CASCADE): those come first.
            await conn.execute(
                "CREATE TEMP TABLE bench_players ON COMMIT DROP AS"
                " SELECT gen_random_uuid() AS user_id, i FROM generate_series(1, $1) AS i",
                others,
            )
            await conn.execute(
                "INSERT INTO users (user_id, username, password_hash)"
                " SELECT user_id, 'bench1m_' || i, 'x' FROM bench_players"
            )
            await conn.execute(
                "INSERT INTO board_scores"
                " (board_id, window_id, period, user_id, score, entries, version, reached_at)"
                " SELECT $1, 'all-time', 'all', user_id, 1 + floor(random() * 1000000)::bigint,"
                " 1 + i % 50, 1 + i % 50, now() - random() * interval '30 days'"
                " FROM bench_players",
                BIG_BOARD,
            )
        loaded_s = time.perf_counter() - start
        top, middle, bottom = ranked
        scores = {top.user_id: 2_000_000, middle.user_id: 500_000, bottom.user_id: 0}
        await conn.executemany(
            "INSERT INTO board_scores"
            " (board_id, window_id, period, user_id, score, entries, version, reached_at)"
            " VALUES ($1, 'all-time', 'all', $2, $3, 1, 1, now())",
            [(BIG_BOARD, uuid.UUID(u), s) for u, s in scores.items()],
        )
        await conn.execute("ANALYZE users")
        await conn.execute("ANALYZE board_scores")
        sample = await conn.fetch(
            "SELECT user_id FROM board_scores WHERE board_id = $1 ORDER BY random() LIMIT 5000",
            BIG_BOARD,
        )
    finally:
        await conn.close()
    return {"loaded_s": round(loaded_s, 1), "sample": [str(r[0]) for r in sample]}


async def wait_built(
    redis: aioredis.Redis, keys: PeriodBoardKeys, since: float, timeout_s: float
) -> float:
    """Seconds from ``since`` (a perf_counter time) until the period's ``built`` marker is there
    (polled every 50 ms)."""
    while not await redis.exists(keys.built):
        if time.perf_counter() - since > timeout_s:
            raise RuntimeError(f"the broadcaster did not rebuild the period in {timeout_s} s")
        await asyncio.sleep(0.05)
    return time.perf_counter() - since


async def redis_memory(redis: aioredis.Redis, keys: PeriodBoardKeys) -> dict[str, int]:
    """MEMORY USAGE (every element sampled) of the rank zset and the users hash."""
    rank = await redis.memory_usage(keys.rank, samples=0)
    users = await redis.memory_usage(keys.users, samples=0)
    return {"rank_bytes": int(rank or 0), "users_bytes": int(users or 0)}


async def used_memory(redis: aioredis.Redis) -> int:
    """INFO memory's used_memory (the whole shared Redis: other runs' keys move it too)."""
    info = await redis.info("memory")
    return int(info["used_memory"])


async def part_reads(args: argparse.Namespace, infra: Infra) -> dict[str, Any]:
    """Part 1: the big board, loaded, rebuilt, measured and removed."""
    env = await create_test_env(infra)
    extra = {
        "SCOREBOARD_LOG_LEVEL": "WARNING",
        "SCOREBOARD_BOARD_CACHE_TTL_S": "0",
        **{f"SCOREBOARD_{k}": UNLIMITED for k in LIFTED},
    }
    system = start_system(env, extra)
    redis = aioredis.from_url(env.redis_url)
    keys = PeriodBoardKeys.for_period(env.redis_prefix, BIG_BOARD, ALL_TIME, "all")
    port = system.services["gateway"].port
    client = HttpClient(HOST, port, max_connections=args.concurrency)
    try:
        async with aiohttp.ClientSession() as http:
            ranked = [
                await register_and_login(http, system.gateway, f"b1m{uuid.uuid4().hex[:10]}")
                for _ in range(3)
            ]
        print(f"loading {args.players:,} players into PostgreSQL", file=sys.stderr, flush=True)
        loaded = await fill_big_board(env.postgres_dsn, args.players, ranked)
        print(f"loaded in {loaded['loaded_s']} s; rebuilding Redis", file=sys.stderr, flush=True)
        memory_before = await used_memory(redis)
        # The first read finds the period unbuilt: PostgreSQL answers it and the broadcaster
        # rebuilds the period in the background, from that read on.
        path = f"/api/boards/{BIG_BOARD}/{ALL_TIME}"
        started = time.perf_counter()
        status, body = await client.send(get_request(f"{path}/top?limit=100", port))
        fallback_ms = (time.perf_counter() - started) * 1000
        if status != 200:
            raise RuntimeError(f"first read {status}: {body[:300]!r}")
        rebuild_s = await wait_built(redis, keys, started, args.rebuild_timeout)
        players_in_redis = int(await redis.zcard(keys.rank))
        memory_after = await used_memory(redis)
        usage = await redis_memory(redis, keys)
        per_entry = (usage["rank_bytes"] + usage["users_bytes"]) / max(players_in_redis, 1)
        memory = {
            **usage,
            "bytes_per_entry": round(per_entry, 1),
            "used_memory_delta_bytes": memory_after - memory_before,
            "used_memory_delta_per_entry": round(
                (memory_after - memory_before) / max(players_in_redis, 1), 1
            ),
        }
        print(
            f"rebuilt {players_in_redis:,} entries in {rebuild_s:.1f} s"
            f" ({players_in_redis / rebuild_s:,.0f}/s); memory {memory}",
            file=sys.stderr,
            flush=True,
        )
        requests = await read_requests(args, redis, keys, path, port, ranked, loaded["sample"])
        await check_reads(client, requests, args.players)
        pids = {
            svc.proc.pid: name
            for name, svc in system.services.items()
            if name in ("gateway", "broadcaster") and svc.proc is not None
        } | {os.getpid(): "load_generator"}
        trials = []
        for kind, raws in requests.items():
            trial = ReadTrial(kind)
            await closed_loop(client, raws, args.concurrency, trial, pids)
            row = trial.summary()
            trials.append(row)
            print(
                f"-- {kind:20} {row['rate_per_s']:8.1f}/s  p50 {row['p50_ms']} ms"
                f"  p99 {row['p99_ms']} ms (target <= {row['target_p99_ms']})"
                f"  {row['statuses']}  cores {row['cores']}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        await client.close()
        system.stop()
        await wait_idle(infra, env)
        # UNLINK frees the million-entry keys off Redis's main thread (a DEL would block the
        # shared Redis for a moment); drop_test_env then removes what is left.
        with contextlib.suppress(Exception):
            await redis.unlink(*keys.board)
        await redis.aclose()
        await drop_test_env(infra, env)
    return {
        "players": players_in_redis,
        "load_postgres_s": loaded["loaded_s"],
        "rebuild_s": round(rebuild_s, 3),
        "rebuild_entries_per_s": round(players_in_redis / rebuild_s),
        "first_read_from_postgres_ms": round(fallback_ms, 1),
        "redis_memory": memory,
        "concurrency": args.concurrency,
        "reads": trials,
    }


async def read_requests(
    args: argparse.Namespace,
    redis: aioredis.Redis,
    keys: PeriodBoardKeys,
    path: str,
    port: int,
    ranked: Sequence[Player],
    sample: Sequence[str],
) -> dict[str, list[bytes]]:
    """The pre-encoded requests of each kind of read (``--requests`` each)."""
    n = args.requests
    rng = random.Random(11)
    players = int(await redis.zcard(keys.rank))
    deep = []
    for rank0 in (
        rng.randrange(players // 2, max(players - 100, players // 2 + 1)) for _ in range(200)
    ):
        found = await redis.zrevrange(keys.rank, rank0, rank0, withscores=True)
        member, score = found[0][0], found[0][1]
        assert isinstance(member, bytes)
        text = cursor_for(BIG_BOARD, ALL_TIME, "all", int(score), member.decode())
        deep.append(get_request(f"{path}/top?limit=100&cursor={text}", port))
    top, middle, bottom = ranked
    return {
        "top_100": [get_request(f"{path}/top?limit=100", port)] * n,
        "top_1000": [get_request(f"{path}/top?limit=1000", port)] * n,
        "deep_page_100": [deep[i % len(deep)] for i in range(n)],
        "around_me_rank1": [get_request(f"{path}/around/me?n=5", port, top.access_token)] * n,
        "around_me_middle": [get_request(f"{path}/around/me?n=5", port, middle.access_token)] * n,
        "around_me_bottom": [get_request(f"{path}/around/me?n=5", port, bottom.access_token)] * n,
        "rank_random_player": [
            get_request(f"{path}/users/{rng.choice(sample)}", port) for _ in range(n)
        ],
    }


async def check_reads(client: HttpClient, requests: dict[str, list[bytes]], players: int) -> None:
    """Each kind answers what it should before it is timed (a fast wrong answer is no result)."""
    answers = {}
    for kind, raws in requests.items():
        status, body = await client.send(raws[0])
        if status != 200:
            raise RuntimeError(f"{kind}: {status} {body[:300]!r}")
        answers[kind] = json.loads(body)
    if answers["top_100"]["entries"][0]["score"] != 2_000_000 or len(
        answers["top_1000"]["entries"]
    ) != min(1000, players):
        raise RuntimeError("top is not the board it should be")
    if answers["deep_page_100"]["entries"][0]["rank"] <= players // 2:
        raise RuntimeError("the deep cursor did not page deep")
    expected = {"around_me_rank1": 1, "around_me_bottom": players}
    for kind, rank in expected.items():
        if answers[kind]["rank"] != rank or answers[kind]["players"] != players:
            raise RuntimeError(f"{kind}: rank {answers[kind]['rank']}, wanted {rank}")
    middle = answers["around_me_middle"]
    if not 1 < middle["rank"] < players or len(middle["entries"]) != 11:
        raise RuntimeError(f"around_me_middle: {middle}")


# -- part 2: many boards -----------------------------------------------------------------------


def action_types(boards: int) -> list[str]:
    """The run's action types, one per board: ``mode_000`` has no board of its own (a mode
    counted on the default board alone), ``mode_NNN`` feeds board ``mode-NNN`` in ``own``."""
    return [f"mode_{i:03d}" for i in range(boards)]


def run_catalog(types: Sequence[str]) -> dict[str, ActionSpec]:
    """The action catalog of the run: every type at the same price, so the topologies differ
    only in where a command counts."""
    return {t: ActionSpec(points=MODE_POINTS) for t in types}


def board_definitions(topology: str, boards: int) -> list[BoardDefinition]:
    """The ``boards - 1`` boards besides the default one, each with four windows.

    ``own``: each fed by its own action type only (a board per game mode); ``all``: each fed by
    every type (100 copies of one board, the harshest case); ``single``: none.
    """
    if topology == "own":
        return [
            BoardDefinition(
                board_id=f"mode-{i:03d}",
                title=f"Mode {i}",
                action_types=(f"mode_{i:03d}",),
                windows=APPLY_WINDOWS,
            )
            for i in range(1, boards)
        ]
    if topology == "all":
        return [
            BoardDefinition(board_id=f"bench-{i:03d}", title=f"Bench {i}", windows=APPLY_WINDOWS)
            for i in range(1, boards)
        ]
    return []


async def use_topology(conn: asyncpg.Connection, definitions: Sequence[BoardDefinition]) -> None:
    """Retire every board but the default one, then make ``definitions`` count, in one
    transaction (the score service sees one topology or the other, never a mix)."""
    async with conn.transaction():
        await conn.execute(
            "UPDATE boards SET retired = true, revision = nextval('boards_revision_seq')"
            " WHERE board_id <> $1 AND NOT retired",
            DEFAULT_BOARD,
        )
        await save_definitions(conn, definitions)


def mode_commands(n: int, users: list[uuid.UUID], types: Sequence[str], seed: int) -> list[Command]:
    """make_commands' commands, command ``i`` of type ``types[i % len(types)]`` (uniform over
    the types; any ``len(types)`` consecutive commands cover every type)."""
    out = []
    for i, c in enumerate(make_commands(n, users, seed=seed)):
        data = c.data.model_copy(
            update={"action_type": types[i % len(types)], "points": MODE_POINTS}
        )
        out.append(Command(c.delivery, data))
    return out


@dataclass(frozen=True)
class Counted:
    """Where a set of commands counts under one catalog of boards: the distinct board_scores
    rows, (board, window, period, player), and the board periods summed over the commands."""

    rows: int
    periods: int

    @classmethod
    def expected(cls, catalog: Catalog, commands: Sequence[Command]) -> Counted:
        """What the store should write for ``commands`` (each in the period of its
        accepted_at, on every counted window of every board its type feeds)."""
        keys = set()
        periods = 0
        for c in commands:
            data = c.data
            for board in catalog.feeding(data.action_type):
                for window in board.counted_windows:
                    period = board.period_at(window, data.accepted_at)
                    if period is not None:
                        keys.add((board.id, window, period.id, data.user_id))
                        periods += 1
        return cls(rows=len(keys), periods=periods)


async def add_players(dsn: str, n: int) -> list[uuid.UUID]:
    """``n`` users rows (the score service only reads them)."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "INSERT INTO users (user_id, username, password_hash)"
            " SELECT gen_random_uuid(), 'bapply_' || i, 'x' FROM generate_series(1, $1) AS i"
            " RETURNING user_id",
            n,
        )
    finally:
        await conn.close()
    return [r[0] for r in rows]


async def store_rate(
    store: ScoreStore,
    conn: asyncpg.Connection,
    commands: Sequence[Command],
    batch: int,
    expected: Counted,
) -> tuple[float, float]:
    """Commands/s of the service's store over ``commands`` (from empty tables), and the longest
    batch in seconds. Checked: the total of the scores, and board_scores holds exactly the
    ``expected`` rows and entries (one entry per command and board period it counts in)."""
    await conn.execute("TRUNCATE actions, outbox, scores, board_scores")
    longest = 0.0
    start = time.perf_counter()
    for i in range(0, len(commands), batch):
        began = time.perf_counter()
        await store.apply(commands[i : i + batch])
        longest = max(longest, time.perf_counter() - began)
    rate = len(commands) / (time.perf_counter() - start)
    total = await conn.fetchval("SELECT coalesce(sum(score), 0) FROM scores")
    if total != sum(c.data.points for c in commands):
        raise RuntimeError("the store applied the wrong total")
    row = await conn.fetchrow("SELECT count(*), coalesce(sum(entries), 0) FROM board_scores")
    assert row is not None
    found = Counted(rows=int(row[0]), periods=int(row[1]))
    if found != expected:
        raise RuntimeError(f"board_scores holds {found}, expected {expected}")
    return rate, longest


async def part_store(
    args: argparse.Namespace, env: TestEnv, users: list[uuid.UUID]
) -> dict[str, Any]:
    """Part 2a: the store's throughput, the default board alone vs each topology."""
    # The service's pool times statements out after 10 s (common.postgres); a batch of many
    # boards can take longer, so this pool waits, and the longest batch is reported instead.
    pool = await asyncpg.create_pool(env.postgres_dsn, min_size=1, max_size=2, command_timeout=None)
    assert pool is not None
    conn = await asyncpg.connect(env.postgres_dsn)
    types = action_types(args.boards)
    commands = mode_commands(args.apply_commands, users, types, seed=7)
    configs = [SINGLE, *args.topology]
    rates: dict[str, list[float]] = {k: [] for k in configs}
    longest = dict.fromkeys(configs, 0.0)
    counted: dict[str, Counted] = {}
    try:
        for which in configs:
            await use_topology(conn, board_definitions(which, args.boards))
            counted[which] = Counted.expected(await load_catalog(conn), commands)
            print(
                f"-- {which:13} {counted[which].periods / len(commands):.2f} board periods"
                f" per command, {counted[which].rows:,} board_scores rows",
                file=sys.stderr,
                flush=True,
            )
        store = ScoreStore(pool)
        await store.apply(commands[:1])  # connect and warm the statement cache
        for r in range(args.repeats):
            for which in configs if r % 2 == 0 else configs[::-1]:
                await use_topology(conn, board_definitions(which, args.boards))
                rate, slowest = await store_rate(store, conn, commands, args.batch, counted[which])
                rates[which].append(rate)
                longest[which] = max(longest[which], slowest)
                print(
                    f"-- store {which:13} {rate:9.0f} commands/s, longest batch {slowest:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        await conn.execute("TRUNCATE actions, outbox, scores, board_scores")
        await use_topology(conn, [])
    finally:
        await conn.close()
        await pool.close()
    medians = {k: statistics.median(v) for k, v in rates.items()}

    def summary(which: str) -> dict[str, Any]:
        row = {
            "board_periods_per_command": round(counted[which].periods / len(commands), 3),
            "board_scores_rows": counted[which].rows,
            "board_scores_entries": counted[which].periods,
            "commands_per_s": round(medians[which]),
            "runs_commands_per_s": [round(v) for v in rates[which]],
            "longest_batch_s": round(longest[which], 2),
        }
        if which != SINGLE:
            row["ratio"] = round(medians[which] / medians[SINGLE], 3)
            row["target_ratio"] = APPLY_RATIO_TARGET
        return row

    return {
        "commands": args.apply_commands,
        "users": args.apply_users,
        "users_touched": len({c.data.user_id for c in commands}),
        "batch_max": args.batch,
        "service_statement_timeout_s": 10,
        SINGLE: summary(SINGLE),
        **{t: summary(t) for t in args.topology},
    }


@dataclass
class Arrivals:
    """When each action's ScoreChanged (Kafka) and AppliedNotice (Redis) arrived."""

    sent: dict[str, float] = field(default_factory=dict)
    changed: dict[str, float] = field(default_factory=dict)
    applied: dict[str, float] = field(default_factory=dict)

    async def drained(self, timeout_s: float) -> bool:
        """Wait until every sent command was seen both ways (False: the timeout came first)."""
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            if all(a in self.changed and a in self.applied for a in self.sent):
                return True
            await asyncio.sleep(0.1)
        return False


_ACTION_ID: Final = b'"action_id":"'


def action_id_of(payload: bytes) -> str | None:
    """The first ``action_id`` of a JSON event, found without decoding it (a ScoreChanged with
    hundreds of board entries is tens of KB: decoding each would load this very machine)."""
    at = payload.find(_ACTION_ID)
    if at < 0:
        return None
    start = at + len(_ACTION_ID)
    return payload[start : start + 36].decode()


async def watch_changed(
    consumer: AIOKafkaConsumer, arrivals: Arrivals, stop: asyncio.Event
) -> None:
    """Stamp each ScoreChanged as it is fetched."""
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=100, max_records=2000)
        now = time.perf_counter()
        for records in batches.values():
            for record in records:
                found = action_id_of(record.value or b"")
                if found is not None:
                    arrivals.changed.setdefault(found, now)


async def watch_applied(pubsub: Any, arrivals: Arrivals, stop: asyncio.Event) -> None:
    """Stamp each AppliedNotice as it arrives."""
    while not stop.is_set():
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            found = action_id_of(message["data"])
            if found is not None:
                arrivals.applied.setdefault(found, time.perf_counter())


async def changed_consumer(env: TestEnv) -> AIOKafkaConsumer:
    """A reader of the run's ScoreChanged topic from its end (no group: every partition)."""
    consumer = AIOKafkaConsumer(
        Topics(env.topic_prefix).changed,
        **env.kafka_auth().aiokafka(),
        bootstrap_servers=env.kafka_bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        isolation_level="read_committed",
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=100)
        for tp in consumer.assignment():
            await consumer.position(tp)  # fixed now: what is produced later is read
    except BaseException:
        await consumer.stop()
        raise
    return consumer


async def paced(
    env: TestEnv,
    users: list[uuid.UUID],
    types: Sequence[str],
    arrivals: Arrivals,
    rate: float,
    count: int,
) -> float:
    """Produce ``count`` signed commands of ``types`` at ``rate`` a second, open loop; returns
    the achieved produce rate."""
    settings = ScoreSettings.load(
        **env.overrides(),
        kafka_username=GATEWAY,
        kafka_password=local_kafka_password(GATEWAY),
    )
    signer = CommandSigner(settings.command_keys[0])  # as the gateway signs
    topic = Topics(env.topic_prefix).commands
    commands = mode_commands(count, users, types, seed=random.randrange(1 << 30))
    producer = make_producer(settings, client_id="bench-boards")
    await producer.start()
    acks = []
    try:
        start = time.perf_counter()
        tick = 0.01
        for i, c in enumerate(commands):
            due = start + i / rate
            if due - time.perf_counter() > tick:
                await asyncio.sleep(due - time.perf_counter())
            data = c.data
            value = encode(ScoreCommandEvent.wrap(_fresh(data), source="/gateway"))
            key = str(data.user_id).encode()
            arrivals.sent[str(data.action_id)] = time.perf_counter()
            acks.append(
                await producer.send(
                    topic, value, key=key, headers=inject_headers([signer.header(key, value)])
                )
            )
        await asyncio.gather(*acks)
        return len(commands) / (time.perf_counter() - start)
    finally:
        await producer.stop()


def _fresh(data: ScoreCommand) -> ScoreCommand:
    """The command accepted now (make_commands stamps its batch once, before the run)."""
    accepted = datetime.now(UTC)
    return data.model_copy(
        update={"accepted_at": accepted, "issued_at": accepted - timedelta(seconds=1)}
    )


def percentile_of_all(seen: Sequence[float], total: int, q: float) -> float | None:
    """The q-th percentile of ``total`` latencies of which only ``seen`` arrived (the others
    count as longer than any): None when it falls among those that never arrived."""
    if total == 0:
        return None
    rank = min(total, max(1, round(q / 100 * total)))
    ordered = sorted(seen)
    return ordered[rank - 1] if rank <= len(ordered) else None


@dataclass(frozen=True)
class Phase:
    """One paced end-to-end run: its label, topology, rate, commands and how long to drain."""

    label: str
    topology: str
    rate: float
    count: int
    drain_s: float


async def e2e_phase(
    phase: Phase,
    env: TestEnv,
    users: list[uuid.UUID],
    types: Sequence[str],
    pids: dict[int, str],
) -> dict[str, Any]:
    """One paced run; latencies from the produce call to ScoreChanged and to AppliedNotice."""
    arrivals = Arrivals()
    consumer = await changed_consumer(env)
    redis = aioredis.from_url(env.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(applied_channel(env.redis_prefix))
    stop = asyncio.Event()
    watchers = [
        asyncio.create_task(watch_changed(consumer, arrivals, stop)),
        asyncio.create_task(watch_applied(pubsub, arrivals, stop)),
    ]
    meter = CpuMeter(pids)
    try:
        # A warm-up, not counted: the first batch of a phase loads the boards' catalog (and,
        # after a change, rebuilds every new period in Redis). In ``own`` a board is touched
        # only by its type: one command of each (mode_commands' order) reaches every board.
        warm_up = max(20, len(types)) if phase.topology == "own" else 20
        await paced(env, users, types, arrivals, phase.rate, min(warm_up, phase.count))
        await arrivals.drained(phase.drain_s)
        arrivals.sent.clear()
        meter.start()
        produced_rate = await paced(env, users, types, arrivals, phase.rate, phase.count)
        drained = await arrivals.drained(phase.drain_s)
        used = meter.stop()
    finally:
        stop.set()
        await asyncio.gather(*watchers, return_exceptions=True)
        await consumer.stop()
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()
    sent = arrivals.sent
    first = min(sent.values())
    to_changed = [
        (arrivals.changed[a] - t) * 1000 for a, t in sent.items() if a in arrivals.changed
    ]
    to_applied = [
        (arrivals.applied[a] - t) * 1000 for a, t in sent.items() if a in arrivals.applied
    ]
    last = max((arrivals.changed[a] for a in sent if a in arrivals.changed), default=first)
    wall = used.pop("wall", 1.0) or 1.0
    row = {
        "phase": phase.label,
        "topology": phase.topology,
        "asked_per_s": phase.rate,
        "produced_per_s": round(produced_rate),
        "commands": len(sent),
        "all_seen_within_drain": drained,
        "drain_timeout_s": phase.drain_s,
        "changed_seen": len(to_changed),
        "applied_seen": len(to_applied),
        "applied_per_s": round(len(to_changed) / max(last - first, 1e-9)),
        "to_score_changed_p50_ms": _round(percentile_of_all(to_changed, len(sent), 50), 1),
        "to_score_changed_p99_ms": _round(percentile_of_all(to_changed, len(sent), 99), 1),
        "to_applied_notice_p50_ms": _round(percentile_of_all(to_applied, len(sent), 50), 1),
        "to_applied_notice_p99_ms": _round(percentile_of_all(to_applied, len(sent), 99), 1),
        "cores": {k: round(v / wall, 2) for k, v in used.items() if k != "total"},
    }
    print(
        f"-- e2e {phase.label:16} asked {phase.rate:g}/s, applied {row['applied_per_s']}/s;"
        f" to ScoreChanged p50 {row['to_score_changed_p50_ms']}"
        f" p99 {row['to_score_changed_p99_ms']} ms;"
        f" to AppliedNotice p99 {row['to_applied_notice_p99_ms']} ms;"
        f" seen {row['changed_seen']}/{row['commands']}; cores {row['cores']}",
        file=sys.stderr,
        flush=True,
    )
    return row


async def wait_idle(infra: Infra, env: TestEnv, timeout_s: float = 180.0) -> None:
    """Wait until no session is left in the run's database once its services stopped: the
    backend of a stopped service may still run its statement (a many-board batch takes tens of
    seconds), that role's backend is not ours to terminate, so DROP DATABASE ... WITH (FORCE)
    would refuse. Every session counts: another role's ``state`` is hidden from us."""
    db = env.postgres_dsn.rpartition("/")[2]
    conn = await asyncpg.connect(infra.postgres_admin_dsn)
    try:
        deadline = time.perf_counter() + timeout_s
        while time.perf_counter() < deadline:
            left = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db
            )
            if not left:
                return
            await asyncio.sleep(0.5)
        print(f"{left} session(s) still in {db} after {timeout_s} s", file=sys.stderr)
    finally:
        await conn.close()


async def part_apply(args: argparse.Namespace, infra: Infra) -> dict[str, Any]:
    """Part 2: the store's throughput, then end to end through the running services, the
    default board alone and each ``--topology``, with one catalog and one kind of command."""
    env = await create_test_env(infra, partitions=12)
    system: System | None = None
    types = action_types(args.boards)
    count = round(args.rate * args.seconds)
    sustainable = round(args.sustainable_rate * args.seconds)
    # ``all`` at --rate runs last: it leaves a backlog that is abandoned at its timeout.
    plan = [
        Phase(SINGLE, SINGLE, args.rate, count, args.drain_timeout),
        Phase("own", "own", args.rate, count, args.drain_timeout),
        Phase("all_sustainable", "all", args.sustainable_rate, sustainable, args.drain_timeout),
        Phase("all", "all", args.rate, count, args.overload_drain),
    ]
    plan = [p for p in plan if p.topology in (SINGLE, *args.topology)]
    try:
        users = await add_players(env.postgres_dsn, args.apply_users)
        store = await part_store(args, env, users)
        extra = {
            "SCOREBOARD_LOG_LEVEL": "WARNING",
            "SCOREBOARD_BATCH_MAX": str(args.service_batch_max),
            "SCOREBOARD_ACTION_CATALOG": json.dumps(
                {t: spec.model_dump() for t, spec in run_catalog(types).items()}
            ),
        }
        system = start_system(env, extra)
        pids = {
            svc.proc.pid: name
            for name, svc in system.services.items()
            if name in ("score", "broadcaster") and svc.proc is not None
        } | {os.getpid(): "load_generator"}
        conn = await asyncpg.connect(env.postgres_dsn)
        phases = []
        try:
            for phase in plan:
                # The score service reloads the boards in its next batch (their revision moved).
                await use_topology(conn, board_definitions(phase.topology, args.boards))
                phases.append(await e2e_phase(phase, env, users, types, pids))
        finally:
            await conn.close()
    finally:
        if system is not None:
            system.stop()
        await wait_idle(infra, env)
        await drop_test_env(infra, env)
    at_rate = {p["phase"]: p["applied_per_s"] for p in phases}
    return {
        "boards": args.boards,
        "action_types": len(types),
        "store": store,
        "end_to_end": {
            "measured_from": "the produce call of the signed command (as the gateway sends it)",
            "to": "its ScoreChanged read from Kafka; its AppliedNotice on Redis (main board)",
            "service_batch_max": args.service_batch_max,
            "phases": phases,
            "applied_ratio": {
                t: round(at_rate[t] / max(at_rate[SINGLE], 1), 3) for t in args.topology
            },
            "target_ratio": APPLY_RATIO_TARGET,
        },
    }


# -- the run -----------------------------------------------------------------------------------


async def run(args: argparse.Namespace, infra: Infra = LOCAL_INFRA) -> dict[str, Any]:
    """Both parts (or the one asked) on ``infra``, with the machine before and after."""
    result: dict[str, Any] = {"benchmark": "boards", "machine_at_start": machine()}
    headline: dict[str, float] = {}
    targets: dict[str, float] = {}
    if not args.skip_reads:
        reads = await part_reads(args, infra)
        result["big_board"] = reads
        for row in reads["reads"]:
            if row["p99_ms"] is not None:
                headline[f"{row['kind']}_p99_ms"] = row["p99_ms"]
                targets[f"{row['kind']}_p99_ms"] = row["target_p99_ms"]
    if not args.skip_apply:
        apply = await part_apply(args, infra)
        result["many_boards"] = apply
        e2e = apply["end_to_end"]
        for topology in args.topology:
            headline[f"{topology}_apply_ratio"] = apply["store"][topology]["ratio"]
            targets[f"{topology}_apply_ratio"] = APPLY_RATIO_TARGET
            headline[f"{topology}_e2e_applied_ratio"] = e2e["applied_ratio"][topology]
            targets[f"{topology}_e2e_applied_ratio"] = APPLY_RATIO_TARGET
        for phase in e2e["phases"]:
            if phase["to_score_changed_p99_ms"] is not None:
                headline[f"{phase['phase']}_e2e_p99_ms"] = phase["to_score_changed_p99_ms"]
                targets[f"{phase['phase']}_e2e_p99_ms"] = E2E_P99_TARGET_MS
    result["machine_at_end"] = machine()
    result["settings"] = vars(args)
    result["headline"] = headline
    result["targets"] = targets
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line; ``--short`` shrinks every default."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--short", action="store_true", help="a quick run (small everything)")
    parser.add_argument("--players", type=int, help="players on the big board (1,000,000)")
    parser.add_argument("--requests", type=int, help="requests per kind of read (3,000)")
    parser.add_argument("--concurrency", type=int, default=16, help="reads in flight")
    parser.add_argument("--rebuild-timeout", type=float, default=900.0)
    parser.add_argument("--boards", type=int, help="boards incl. the default one (100)")
    parser.add_argument("--apply-users", type=int, help="players the commands spread over")
    parser.add_argument("--apply-commands", type=int, help="commands per store run (4,000)")
    parser.add_argument("--batch", type=int, default=2000, help="store batch (the service's max)")
    parser.add_argument("--repeats", type=int, help="alternating store runs (medians)")
    parser.add_argument("--rate", type=float, help="commands/s asked end to end (1,000)")
    parser.add_argument("--seconds", type=float, help="seconds of each paced run (10)")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument(
        "--service-batch-max",
        type=int,
        default=100,
        help="the score service's SCOREBOARD_BATCH_MAX end to end (its default, 2,000, makes a"
        " many-board batch outlast the 10 s statement timeout: retried forever)",
    )
    parser.add_argument(
        "--sustainable-rate",
        type=float,
        help="commands/s of the many-board run that should keep up (20)",
    )
    parser.add_argument(
        "--overload-drain",
        type=float,
        default=60.0,
        help="seconds the many-board run at --rate may drain before its backlog is abandoned",
    )
    parser.add_argument(
        "--topology",
        default=",".join(TOPOLOGIES),
        help="the many-board topologies of part 2, comma-separated: own (each extra board fed by"
        " its own action type) and/or all (each fed by every type)",
    )
    parser.add_argument("--skip-reads", action="store_true", help="only part 2")
    parser.add_argument("--skip-apply", action="store_true", help="only part 1")
    args = parser.parse_args(argv)
    full = {
        "players": 1_000_000, "requests": 3000, "boards": 100, "apply_users": 10_000,
        "apply_commands": 4000, "repeats": 2, "rate": 1000.0, "seconds": 10.0,
        "sustainable_rate": 20.0,
    }  # fmt: skip
    short = {
        "players": 10_000, "requests": 300, "boards": 10, "apply_users": 1000,
        "apply_commands": 1000, "repeats": 1, "rate": 200.0, "seconds": 2.0,
        "sustainable_rate": 20.0,
    }  # fmt: skip
    for name, value in (short if args.short else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.players < 4:
        parser.error("--players must be at least 4 (three of them are ranked on purpose)")
    if args.boards < 1:
        parser.error("--boards must be at least 1 (the default board)")
    topology = tuple(dict.fromkeys(t.strip() for t in args.topology.split(",") if t.strip()))
    if not topology or not set(topology) <= set(TOPOLOGIES):
        parser.error(f"--topology: one or more of {', '.join(TOPOLOGIES)}")
    args.topology = topology
    return args


def main() -> None:
    """Parse, run, print and write the JSON."""
    args = parse_args()
    tune_gc()
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "boards.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
