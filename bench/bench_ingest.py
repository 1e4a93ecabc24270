"""Ingest and board reads side by side with a bare aiohttp endpoint: one load tool, one run.

    uv run python bench/bench_ingest.py [--seconds 6] [--concurrency 64] [--players 40]
        [--rounds 2] [--tickets 16000] [--downstream running|paused] [--profile DIR]

Starts the four services on a fresh slice of the local servers (its own database, topics and
Redis prefix; one gateway process, its per-user and per-address limits lifted) and the bare
server of :mod:`bench.bare_http` (aiohttp on uvloop, no checks, no Redis, no Kafka). The same
lean client (:class:`bench.loadgen.HttpClient`: keep-alive connections, pre-encoded requests,
``--concurrency`` requests in flight, closed loop) then drives, alternating which goes first
from round to round:

- **ingest**: ``POST /api/scoreboard/update`` with tickets issued beforehand (each used once:
  the gateway checks the token, the ticket's HMAC, the done marker, the rate limits and the
  earning rules in Redis, and answers 202 once Kafka has the command, acks=all) against the bare
  ``POST /update`` (decode the same body, answer 202). Target: ours at least 0.5 of bare.
  With ``--downstream paused`` the score service and the broadcaster are stopped (SIGSTOP,
  then SIGCONT; a trial stays within their Kafka session timeout) while ours is measured, so
  the gateway has the cores the work its updates set going would take (the commands wait in
  Kafka): what one gateway process accepts, not what the whole machine applies.
- **reads**: ``GET /api/scoreboard/top?limit=10`` (the gateway proxies it to the broadcaster,
  which reads the Redis board) against the bare ``GET /top`` (the same bytes from memory).
  Target: ours at least 0.7 of bare. redis-benchmark's rate for the same ZREVRANGE on a 1,000-member
  sorted set is printed as the ceiling no reader of Redis passes.

Per trial: requests/s, latency p50/p99, the statuses, and the CPU each process used (the load
generator's included, so one can see whether it, not the server, was the limit). Prints a table
(stderr) and one JSON object (the last stdout line), also written to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import asyncpg
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import CpuMeter, machine_busy_seconds
from bench.loadgen import HttpClient, HttpConnectionClosed, HttpProtocolError
from common.runner import tune_gc
from testkit.broadcaster import free_port, http_get
from testkit.env import LOCAL_INFRA, create_test_env, drop_test_env
from tests.e2e.harness import register_and_login, start_system

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
HOST: Final = "127.0.0.1"
UNLIMITED: Final = "1000000"
UPDATE_PATH: Final = "/api/scoreboard/update"
TOP_PATH: Final = "/api/scoreboard/top?limit=10"
# Tickets are issued ahead, many open per player; the update path is what is measured.
CATALOG: Final = {"tap": {"points": 1, "min_duration_ms": 0, "max_open": 10_000}}
LIFTED: Final = (
    "UPDATE_RATE_PER_USER",
    "UPDATE_BURST_PER_USER",
    "UPDATE_RATE_PER_ADDRESS",
    "UPDATE_BURST_PER_ADDRESS",
    "ACTIONS_RATE_PER_USER",
    "ACTIONS_BURST_PER_USER",
    "ACTIONS_RATE_PER_ADDRESS",
    "ACTIONS_BURST_PER_ADDRESS",
    "AUTH_RATE_PER_ADDRESS",
    "AUTH_BURST_PER_ADDRESS",
    "REGISTER_RATE_PER_ADDRESS",
    "REGISTER_BURST_PER_ADDRESS",
    "REGISTER_RATE_GLOBAL",
    "REGISTER_BURST_GLOBAL",
    "READS_RATE_PER_ADDRESS",
    "READS_BURST_PER_ADDRESS",
    "POINTS_BUDGET_PER_MINUTE",
)
TARGETS: Final = {"ingest_ratio": 0.5, "reads_ratio": 0.7}


def get_request(path: str, port: int) -> bytes:
    """A pre-encoded keep-alive GET."""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: keep-alive\r\n\r\n".encode()


@dataclass
class Trial:
    """One closed-loop run against one server."""

    server: str
    kind: str
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    ran_out: bool = False
    cpu: dict[str, float] = field(default_factory=dict)

    def summary(self, ok: int) -> dict[str, Any]:
        """Requests/s (answers ``ok`` only), latency percentiles, statuses, CPU in cores."""
        good = self.statuses.get(str(ok), 0)
        lat = sorted(self.latencies_ms)
        wall = self.cpu.get("wall", self.seconds) or 1.0
        return {
            "server": self.server,
            "kind": self.kind,
            "rate_per_s": round(good / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": round(statistics.median(lat), 2) if lat else None,
            "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2) if lat else None,
            "statuses": dict(self.statuses),
            "ran_out_of_requests": self.ran_out,
            "cores": {k: round(v / wall, 2) for k, v in self.cpu.items() if k != "wall"},
        }


async def closed_loop(
    client: HttpClient,
    requests: Iterator[bytes],
    trial: Trial,
    seconds: float,
    concurrency: int,
    meter: CpuMeter,
    profile: tuple[int, Path] | None = None,
) -> None:
    """``concurrency`` workers send the next request as soon as their last one is answered.

    With ``profile`` (a pid and a file), py-spy records that process over the window.
    """
    deadline = 0.0

    async def worker() -> None:
        while time.perf_counter() < deadline:
            raw = next(requests, None)
            if raw is None:
                trial.ran_out = True
                return
            sent = time.perf_counter()
            try:
                status, _, done = await client.send_timed(raw)
            except (HttpConnectionClosed, HttpProtocolError) as exc:
                trial.statuses[f"error:{type(exc).__name__}"] += 1
                continue
            trial.statuses[str(status)] += 1
            trial.latencies_ms.append((done - sent) * 1000)

    # Warm the pool (connections open, first requests served) outside the measured window.
    warm = [next(requests) for _ in range(concurrency)]
    await asyncio.gather(*(client.send(raw) for raw in warm))
    spy = _py_spy(*profile, seconds) if profile is not None else None
    meter.start()
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    trial.seconds = time.perf_counter() - start
    trial.cpu = meter.stop()
    if spy is not None:
        await asyncio.to_thread(spy.wait, 60)


def _py_spy(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` for ``seconds`` into ``out`` (raw collapsed stacks)."""
    spy = shutil.which("py-spy")
    if spy is None:
        print("no py-spy (run with: uv run --with py-spy)", file=sys.stderr)
        return None
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--rate", "250", "--nonblocking"),
            *("--duration", str(round(seconds)), "--format", "raw", "--output", str(out)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


def redis_ceiling(redis_url: str, key: str) -> float | None:
    """redis-benchmark's ZREVRANGE key 0 9 WITHSCORES rate (requests/s), or None without it."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return None
    parts = urlsplit(redis_url)
    cmd = [binary, "-h", parts.hostname or HOST, "-p", str(parts.port or 6379)]
    if parts.username:
        cmd += ["--user", parts.username]
    if parts.password:
        cmd += ["-a", parts.password]
    cmd += ["-c", "50", "-n", "100000", "--csv", "ZREVRANGE", key, "0", "9", "WITHSCORES"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False).stdout
    match = re.search(r'^"ZREVRANGE[^"]*","([0-9.]+)"', out, re.MULTILINE)
    return float(match.group(1)) if match else None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start everything, run the alternating rounds, stop everything."""
    env = await create_test_env(LOCAL_INFRA, partitions=12)
    system = start_system(
        env,
        {
            "SCOREBOARD_ACTION_CATALOG": json.dumps(CATALOG),
            "SCOREBOARD_LOG_LEVEL": "WARNING",
            **{f"SCOREBOARD_{k}": UNLIMITED for k in LIFTED},
        },
        gateways=1,
    )
    gateway = system.services["gateway"]
    ours = HttpClient(HOST, gateway.port, max_connections=args.concurrency)
    bare_port = free_port()
    top_dir = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    bare_proc: subprocess.Popen[bytes] | None = None
    bare = HttpClient(HOST, bare_port, max_connections=args.concurrency)
    trials: list[Trial] = []
    ceiling: float | None = None
    try:
        async with aiohttp.ClientSession() as http:
            signups = asyncio.Semaphore(8)

            async def signup(i: int) -> str:
                async with signups:
                    name = f"ingest{i:04d}{uuid.uuid4().hex[:4]}"
                    return (await register_and_login(http, gateway.url, name)).access_token

            tokens = await asyncio.gather(*(signup(i) for i in range(args.players)))
            # Some scores, so the top 10 is a real one.
            await _fill_board(ours, tokens)
        top = await asyncio.to_thread(http_get, f"http://{HOST}:{gateway.port}{TOP_PATH}")
        bare_proc = await asyncio.to_thread(_start_bare, bare_port, top, top_dir)
        pids = {
            svc.proc.pid: name
            for name, svc in system.services.items()
            if name in ("gateway", "broadcaster") and svc.proc is not None
        } | {bare_proc.pid: "bare", os.getpid(): "load_generator"}
        gateway_pid = gateway.proc.pid if gateway.proc is not None else None
        downstream = [
            svc.proc.pid
            for name, svc in system.services.items()
            if name in ("score", "broadcaster") and svc.proc is not None
        ]
        tune_gc()
        accepted = await _applied(env.postgres_dsn)  # the board's fill, applied by now or soon
        for r in range(args.rounds):
            order = ["bare", "ours"] if r % 2 == 0 else ["ours", "bare"]
            for server in order:
                trial = Trial(server, "ingest")
                if server == "ours":
                    print(f"round {r + 1}: issuing {args.tickets} tickets", file=sys.stderr)
                    requests = iter(await _tickets(ours, tokens, args.tickets))
                    client = ours
                else:
                    requests = _bare_updates(bare, tokens)
                    client = bare
                paused = downstream if server == "ours" and args.downstream == "paused" else []
                _signal(paused, signal.SIGSTOP)
                try:
                    await closed_loop(
                        client,
                        requests,
                        trial,
                        args.seconds,
                        args.concurrency,
                        CpuMeter(pids),
                        _profile(args, gateway_pid, server, "ingest", r),
                    )
                finally:
                    _signal(paused, signal.SIGCONT)
                if paused:  # the backlog applied before the next trial, which it would slow
                    accepted += trial.statuses.get("202", 0)
                    await _drained(env.postgres_dsn, accepted)
                trials.append(trial)
                _print_trial(trial)
            for server in order:
                trial = Trial(server, "reads")
                if server == "ours":
                    client, raw = ours, get_request(TOP_PATH, gateway.port)
                else:
                    client, raw = bare, get_request("/top", bare_port)
                await closed_loop(
                    client,
                    itertools.repeat(raw),
                    trial,
                    args.seconds,
                    args.concurrency,
                    CpuMeter(pids),
                    _profile(args, gateway_pid, server, "reads", r),
                )
                trials.append(trial)
                _print_trial(trial)
        ceiling = await _redis_ceiling(env.redis_url, env.redis_prefix)
    finally:
        await ours.close()
        await bare.close()
        if bare_proc is not None:
            bare_proc.terminate()
            bare_proc.wait(10)
        shutil.rmtree(top_dir, ignore_errors=True)
        system.stop()
        await drop_test_env(LOCAL_INFRA, env)
    return _result(args, trials, ceiling)


async def _fill_board(client: HttpClient, tokens: list[str]) -> None:
    """One completed action per player (through the real flow)."""
    for raw in await _tickets(client, tokens, len(tokens)):
        status, body = await client.send(raw)
        if status != 202:
            raise RuntimeError(f"update {status}: {body[:200]!r}")


async def _tickets(client: HttpClient, tokens: list[str], n: int) -> list[bytes]:
    """``n`` tickets, round robin over the players, each as its ready-to-send update request."""
    sem = asyncio.Semaphore(32)
    body = b'{"action_type":"tap"}'

    async def one(token: str) -> bytes:
        auth = {"Authorization": f"Bearer {token}"}
        async with sem:
            status, data = await client.post("/api/actions", body, auth)
        if status != 201:
            raise RuntimeError(f"ticket {status}: {data[:200]!r}")
        ticket = json.loads(data)
        update = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
        return client.encode_post(UPDATE_PATH, json.dumps(update).encode(), auth)

    return list(await asyncio.gather(*(one(tokens[i % len(tokens)]) for i in range(n))))


def _bare_updates(client: HttpClient, tokens: list[str]) -> Iterator[bytes]:
    """Update requests of the same shape and size as ours (a token, an action), endlessly."""
    i = 0
    while True:
        update = {
            "action_id": str(uuid.uuid4()),
            "action_type": "tap",
            "action_hash": "k." + "0" * 64,
        }
        auth = {"Authorization": f"Bearer {tokens[i % len(tokens)]}"}
        yield client.encode_post("/update", json.dumps(update).encode(), auth)
        i += 1


async def _redis_ceiling(redis_url: str, prefix: str) -> float | None:
    """Seed a 1,000-member sorted set like the board, measure ZREVRANGE, remove it."""
    key = f"{prefix}bench-ceiling:{uuid.uuid4().hex[:8]}"
    r = aioredis.Redis.from_url(redis_url)
    try:
        await r.zadd(key, {f"user-{i}": i for i in range(1000)})
        return await asyncio.to_thread(redis_ceiling, redis_url, key)
    finally:
        await r.delete(key)
        await r.aclose()


def _profile(
    args: argparse.Namespace, pid: int | None, server: str, kind: str, round_: int
) -> tuple[int, Path] | None:
    """What to profile in this trial: the gateway in ours, with ``--profile``."""
    if args.profile is None or server != "ours" or pid is None:
        return None
    return pid, args.profile / f"gateway-{kind}-{round_ + 1}.txt"


def _start_bare(port: int, top: bytes, directory: Path) -> subprocess.Popen[bytes]:
    """The bare server on ``port``, serving ``top``; returns once it answers."""
    top_file = directory / "top.json"
    top_file.write_bytes(top)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "bare_http.py"), str(port), str(top_file)],
        cwd=HERE.parent,
        stdin=subprocess.DEVNULL,
    )
    for _ in range(300):
        try:
            http_get(f"http://{HOST}:{port}/readyz")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the bare server did not start")


def _print_trial(trial: Trial) -> None:
    s = trial.summary(202 if trial.kind == "ingest" else 200)
    print(
        f"-- {trial.kind:6} {trial.server:5} {s['rate_per_s']:8.1f}/s  p50 {s['p50_ms']} ms"
        f"  p99 {s['p99_ms']} ms  {s['statuses']}  cores {s['cores']}",
        file=sys.stderr,
        flush=True,
    )


async def _applied(dsn: str, *, published: bool = False) -> int:
    """Actions the score service has applied (this run's own database); with ``published``,
    those whose ScoreChanged has left the outbox too."""
    query = "SELECT count(*) FROM actions"
    if published:
        query = (
            "SELECT (SELECT count(*) FROM actions)"
            " - (SELECT count(*) FROM outbox WHERE sent_at IS NULL)"
        )
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(query))
    finally:
        await conn.close()


async def _drained(dsn: str, accepted: int, timeout_s: float = 180.0) -> None:
    """Wait until ``accepted`` actions are applied and published, and the broadcaster has had
    a few seconds for their events."""
    deadline = time.monotonic() + timeout_s
    while (done := await _applied(dsn, published=True)) < accepted:
        if time.monotonic() > deadline:
            print(f"   backlog not drained: {done} of {accepted} published", file=sys.stderr)
            return
        await asyncio.sleep(0.5)
    await asyncio.sleep(3.0)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.kill(pid, sig)


def _result(args: argparse.Namespace, trials: list[Trial], ceiling: float | None) -> dict[str, Any]:
    rows = [t.summary(202 if t.kind == "ingest" else 200) for t in trials]

    def median_rate(kind: str, server: str) -> float:
        rates = [r["rate_per_s"] for r in rows if r["kind"] == kind and r["server"] == server]
        return statistics.median(rates) if rates else 0.0

    rates = {
        kind: {s: median_rate(kind, s) for s in ("ours", "bare")} for kind in ("ingest", "reads")
    }
    ratios = {
        f"{kind}_ratio": round(r["ours"] / r["bare"], 3) if r["bare"] else None
        for kind, r in rates.items()
    }
    print(
        f"ingest: ours {rates['ingest']['ours']:.0f}/s, bare {rates['ingest']['bare']:.0f}/s, "
        f"ratio {ratios['ingest_ratio']} (target >= {TARGETS['ingest_ratio']})\n"
        f"reads:  ours {rates['reads']['ours']:.0f}/s, bare {rates['reads']['bare']:.0f}/s, "
        f"ratio {ratios['reads_ratio']} (target >= {TARGETS['reads_ratio']}); "
        f"redis-benchmark ZREVRANGE ceiling {ceiling}/s",
        file=sys.stderr,
    )
    return {
        "benchmark": "ingest",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "rates_per_s": rates,
        "redis_zrevrange_per_s": ceiling,
        "trials": rows,
        "headline": ratios,
        "targets": TARGETS,
        "machine_busy_seconds_at_end": round(machine_busy_seconds(), 1),
    }


def main() -> None:
    """Parse the arguments, run, print and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="measured time per trial")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight")
    parser.add_argument("--players", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians)")
    parser.add_argument(
        "--tickets",
        type=int,
        default=16_000,
        help="tickets issued per ingest trial of ours (at most 10,000 per player)",
    )
    parser.add_argument(
        "--downstream",
        choices=("running", "paused"),
        default="paused",
        help="the score service and broadcaster during our ingest trials (default: paused)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="write py-spy profiles of the gateway here (run with: uv run --with py-spy)",
    )
    args = parser.parse_args()
    result = asyncio.run(run(args))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
