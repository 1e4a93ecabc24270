"""WebSocket fan-out side by side: our broadcaster, Centrifugo and a bare aiohttp broadcaster.

    uv run python bench/bench_fanout.py [--quick] [--clients 1000,5000,10000,20000]
        [--seconds 10] [--rate 10] [--arrivals fixed|poisson] [--procs 4] [--nice 10]
        [--servers broadcaster,centrifugo,bare] [--rounds 1]

One client fleet (:mod:`bench.fleet`: ``--procs`` processes of WebSocket watchers at nice
``--nice``) watches each server in turn on this machine, in one run, alternating which goes first
from size to size (and round to round): a top-10 frame published ``--rate`` times a second
(``fixed``: evenly spaced; ``poisson``: at random times, on average as often) to 1,000, 5,000,
10,000 and 20,000 clients. Each trial starts its server afresh.

- ``broadcaster``: ours, on the real path, in a slice of the local servers of its own (a
  temporary database, topics and Redis prefix, removed afterwards): each publication is a
  ScoreChanged event produced to Kafka (linger 0), applied to the Redis board by the broadcaster,
  which sends the top frame (``version`` = the board version, so the frame names the newest
  change it shows). The lag includes Kafka and the Redis apply (``apply_lag_ms_mean``).
- ``centrifugo``: Centrifugo v6 (:mod:`bench.centrifugo`), memory engine, defaults otherwise;
  each publication is an HTTP API publish of the same top-10 document to the channel every client
  subscribed to.
- ``bare``: :mod:`bench.bare_broadcaster`, the same document POSTed and written to every socket
  at once: the floor of a Python broadcaster, and proof that the fleet would have seen a faster
  server (item 4 below).

What differs, plainly: ours coalesces, so a client gets at most ``tick_hz`` (10) top frames a
second and a change that comes within 1/10 s of the previous frame waits for the next one (it is
sent at once otherwise); Centrifugo OSS and the bare server send every publication. With
``fixed`` arrivals at 10/s both deliver every change; with ``poisson`` ours coalesces bursts.

Per trial: the delivery lag p50/p99 (publication to the arrival of the frame that first shows a
change, per change and client, one clock), frames per client per second, the server's CPU per
delivered frame (its CPU time over the measured window / frames the fleet received), its RSS per
idle connection (growth from ``--warm`` connections to all, before publishing), and the fleet's
own CPU and event-loop delay (how long frames could sit unread). Per size: the ratios
ours/Centrifugo and the targets. Prints a table (stderr) and one JSON object (the last stdout
line), also written to bench/results/fanout.json with a chart, bench/results/fanout.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiokafka import AIOKafkaProducer

from bench import centrifugo
from bench.cpu import CpuMeter, machine_busy_seconds
from bench.fleet import Queue, Target, Window, fleet_process, merge, percentile, shares
from bench.loadgen import HttpClient, HttpConnectionClosed
from common.events import ScoreChangedEvent, Topics, encode
from common.kafka import make_producer
from common.kafka_access import SCORE
from common.settings import CommonSettings
from testkit.broadcaster import (
    Player,
    free_port,
    http_get,
    new_player,
    rss_kib,
    seed,
    start_process,
    stop_process,
)
from testkit.env import LOCAL_INFRA, TestEnv, create_test_env, drop_test_env

HERE: Final = Path(__file__).resolve().parent
RESULTS: Final = HERE / "results"
SERVERS: Final = ("broadcaster", "centrifugo", "bare")
# Targets (issue 16): ahead of Centrifugo at every size, and these p99 lags for ours.
TARGET_P99_MS: Final = {1000: 40, 10_000: 150, 20_000: 250}
TARGET_KIB_PER_CONNECTION: Final = 16


# -- the servers under test ----------------------------------------------------------------------


class Server:
    """One server process under test, and how to publish a frame to it."""

    name: str
    target: Target
    pid: int
    base = 0  # frame numbers up to this one were there before the trial

    async def publish(self, number: int, document: bytes) -> None:
        """Publish frame ``number`` (``document`` is the top-10 JSON for servers that take one)."""
        raise NotImplementedError

    def metrics(self) -> str:
        """The server's Prometheus text, if it has one worth reading."""
        return ""

    async def stop(self) -> None:
        """Stop the process."""
        raise NotImplementedError


class Broadcaster(Server):
    """Ours: publications are ScoreChanged events on Kafka, the real path."""

    name = "broadcaster"

    def __init__(self, env: TestEnv, producer: AIOKafkaProducer, players: list[Player]) -> None:
        self._env, self._producer, self._players = env, producer, players
        self._topic = Topics(env.topic_prefix).changed
        self._proc: subprocess.Popen[bytes] | None = None

    async def start(self, clients: int) -> Broadcaster:
        port = free_port()
        self._proc = await asyncio.to_thread(
            start_process, self._env, port, max_connections=str(clients + 1000)
        )
        self.pid, self.port = self._proc.pid, port
        self.target = Target(self.name, port, "/ws/scoreboard")
        top = json.loads(http_get(f"http://127.0.0.1:{port}/api/scoreboard/top"))
        self.base = int(top["version"])
        return self

    async def publish(self, number: int, document: bytes) -> None:
        player = self._players[number % len(self._players)]
        change = player.gain(1 + number % 7, datetime.now(UTC))
        await self._producer.send_and_wait(
            self._topic,
            encode(ScoreChangedEvent.wrap(change, source="/bench")),
            key=str(change.user_id).encode(),
        )

    def metrics(self) -> str:
        """The broadcaster's metrics; empty when it cannot answer (a server busy with 20,000
        sockets may reset the scrape): the trial then goes without them."""
        try:
            return http_get(f"http://127.0.0.1:{self.port}/metrics").decode()
        except OSError as exc:
            print(f"   (no metrics: {exc!r})", file=sys.stderr, flush=True)
            return ""

    async def stop(self) -> None:
        if self._proc is not None:
            await asyncio.to_thread(stop_process, self._proc)


class Centrifugo(Server):
    """Centrifugo v6: publications through its HTTP API."""

    name = "centrifugo"

    async def start(self, clients: int) -> Centrifugo:
        self._server = await asyncio.to_thread(centrifugo.Centrifugo.start, free_port())
        self.pid = self._server.proc.pid
        self.target = Target(
            self.name,
            self._server.port,
            "/connection/websocket",
            hello=centrifugo.HELLO,
            ready=centrifugo.SUBSCRIBED,
        )
        return self

    async def publish(self, number: int, document: bytes) -> None:
        await self._server.publish(document)

    async def stop(self) -> None:
        await self._server.stop()


class Bare(Server):
    """The bare aiohttp broadcaster: publications are POSTs it writes to every socket."""

    name = "bare"

    async def start(self, clients: int) -> Bare:
        port = free_port()
        self._proc = await asyncio.to_thread(
            subprocess.Popen,
            [sys.executable, str(HERE / "bare_broadcaster.py"), str(port)],
            cwd=HERE.parent,
            stdin=subprocess.DEVNULL,
        )
        for _ in range(300):
            try:
                http_get(f"http://127.0.0.1:{port}/readyz")
                break
            except OSError:
                await asyncio.sleep(0.1)
        else:
            self._proc.kill()
            raise RuntimeError("the bare broadcaster did not start")
        self.pid = self._proc.pid
        self.target = Target(self.name, port, "/ws")
        self._api = HttpClient("127.0.0.1", port, max_connections=4)
        return self

    async def publish(self, number: int, document: bytes) -> None:
        status, _ = await self._api.post("/publish", document)
        if status != 204:
            raise RuntimeError(f"bare publish: {status}")

    async def stop(self) -> None:
        await self._api.close()
        await asyncio.to_thread(stop_process, self._proc)


def top_document(version: int, players: list[Player]) -> bytes:
    """The top-10 JSON our broadcaster sends, for the servers that are given it."""
    ranked = sorted(players, key=lambda p: -p.score)[:10]
    entries = [
        {"rank": i, "user_id": str(p.user_id), "username": p.username, "score": p.score}
        for i, p in enumerate(ranked, 1)
    ]
    doc = {"type": "top", "version": version, "entries": entries}
    return json.dumps(doc, separators=(",", ":")).encode()


# -- one trial -----------------------------------------------------------------------------------


@dataclass
class Options:
    """The run's settings (from the command line)."""

    seconds: float
    rate: float
    arrivals: str
    procs: int
    nice: int
    warm: int
    profile: Path | None  # py-spy profiles of the Python servers go here (raw collapsed stacks)


class Fleet:
    """The client processes of one trial and the shared memory they read."""

    def __init__(self, target: Target, clients: int, base: int, opts: Options) -> None:
        ctx = mp.get_context("spawn")
        publications = int(opts.seconds * opts.rate)
        self.window = Window(
            base=base,
            sent_at=ctx.RawArray("d", publications + 1),
            final=ctx.Value("q", 0),
            measuring=ctx.Event(),
            go=ctx.Event(),
            leave=ctx.Event(),
        )
        self._out: Queue = ctx.Queue()
        parts = [n for n in shares(clients, opts.procs) if n]
        warm = shares(min(opts.warm, clients // 2), len(parts))
        self.procs = [
            ctx.Process(
                target=fleet_process,
                args=(target, n, w, self.window, self._out, opts.nice),
                daemon=True,
            )
            for n, w in zip(parts, warm, strict=True)
        ]
        self.warm = sum(warm)

    async def _gather(self, kind: str, wait_s: float) -> list[dict[str, Any]]:
        got = [await asyncio.to_thread(self._out.get, True, wait_s) for _ in self.procs]
        assert all(g["kind"] == kind for g in got), got
        return got

    async def start(self) -> list[dict[str, Any]]:
        """Start the processes; they report when their warm-up connections are open."""
        for p in self.procs:
            p.start()
        return await self._gather("warm", 300)

    async def connect(self) -> list[dict[str, Any]]:
        """Let them open the rest; they report when every connection is watching."""
        self.window.go.set()
        return await self._gather("ready", 900)

    async def done(self, final: int) -> list[dict[str, Any]]:
        """The last frame is ``final``: they report once every watcher saw it (or 5 s later)."""
        self.window.final.value = final
        return await self._gather("done", 120)

    async def leave(self) -> None:
        """Close the connections and end the processes."""
        self.window.leave.set()
        for p in self.procs:
            await asyncio.to_thread(p.join, 30)
            if p.is_alive():
                p.kill()


async def settle(pid: int) -> int:
    """The server's RSS (KiB) once it stopped moving."""
    last = rss_kib(pid)
    for _ in range(40):
        await asyncio.sleep(0.25)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            total += float(line.rsplit(" ", 1)[1])
    return total


def profile(server: Server, clients: int, opts: Options) -> subprocess.Popen[bytes] | None:
    """Start py-spy on a Python server for the publishing window (with ``--profile``)."""
    spy = shutil.which("py-spy")
    if opts.profile is None or server.name == "centrifugo" or spy is None:
        return None
    opts.profile.mkdir(parents=True, exist_ok=True)
    out = opts.profile / f"{server.name}-{clients}.txt"
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(server.pid), "--rate", "250", "--nonblocking"),
            *("--duration", str(round(opts.seconds)), "--format", "raw", "--output", str(out)),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )


async def trial(
    start: Callable[[int], Awaitable[Server]], clients: int, players: list[Player], opts: Options
) -> dict[str, Any]:
    """Start a server, connect the fleet, publish, measure, stop."""
    load_before = os.getloadavg()[0]
    server = await start(clients)
    fleet = Fleet(server.target, clients, server.base, opts)
    try:
        connect_started = time.monotonic()
        await fleet.start()
        rss_warm = await settle(server.pid)
        ready = await fleet.connect()
        connect_s = time.monotonic() - connect_started
        rss_idle = await settle(server.pid)
        connected = sum(r["connected"] for r in ready)

        metrics_before = server.metrics()
        meter = CpuMeter(
            {server.pid: "server", os.getpid(): "driver"}
            | {p.pid: "fleet" for p in fleet.procs if p.pid is not None}
        )
        busy_before = machine_busy_seconds()
        meter.start()
        spy = profile(server, clients, opts)
        fleet.window.measuring.set()
        publications = len(fleet.window.sent_at) - 1
        rng = random.Random(clients)
        sent_at = fleet.window.sent_at
        t0 = due = time.perf_counter()
        for n in range(1, publications + 1):
            due += rng.expovariate(opts.rate) if opts.arrivals == "poisson" else 1 / opts.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            document = top_document(server.base + n, players)  # before the clock: not its cost
            sent_at[n] = time.perf_counter()
            await server.publish(n, document)
        produced_s = time.perf_counter() - t0
        done = await fleet.done(server.base + publications)
        cpu = meter.stop()
        if spy is not None:
            await asyncio.to_thread(spy.wait, 60)
        busy = machine_busy_seconds() - busy_before
        metrics_after = server.metrics()
        rss_end = rss_kib(server.pid)
    finally:
        await fleet.leave()
        await server.stop()

    lags = merge({int(k): v for k, v in d["lags"].items()} for d in done)
    delays = merge({int(k): v for k, v in d["loop_delay"].items()} for d in done)
    frames = sum(d["frames"] for d in done)
    wall = cpu["wall"]
    measured = connected - fleet.warm
    result: dict[str, Any] = {
        "server": server.name,
        "clients": clients,
        "connected": connected,
        "failed": sum(r["failed"] for r in ready),
        "connect_seconds": round(connect_s, 1),
        "publications": publications,
        "publications_per_s": round(publications / produced_s, 2),
        "lag_ms": {
            "p50": percentile(lags, 0.50),
            "p90": percentile(lags, 0.90),
            "p99": percentile(lags, 0.99),
            "max": percentile(lags, 1.0),
            "samples": sum(lags.values()),
            "expected": connected * publications,
        },
        "frames_received": frames,
        "frames_per_client_per_s": round(frames / max(1, connected) / produced_s, 2),
        "reached_last_frame": sum(d["reached"] for d in done),
        "closed_by_server": sum(d["closed_by_server"] for d in done),
        "server_cpu": {
            "seconds": cpu.get("server", 0.0),
            "cores": round(cpu.get("server", 0.0) / wall, 2),
            "us_per_frame": round(1e6 * cpu.get("server", 0.0) / max(1, frames), 2),
        },
        "memory": {
            "rss_warm_mib": round(rss_warm / 1024, 1),
            "rss_idle_mib": round(rss_idle / 1024, 1),
            "rss_end_mib": round(rss_end / 1024, 1),
            "kib_per_idle_connection": round((rss_idle - rss_warm) / max(1, measured), 2),
        },
        "fleet": {
            "procs": len(fleet.procs),
            "nice": opts.nice,
            "cpu_cores": round(cpu.get("fleet", 0.0) / wall, 2),
            "us_per_frame": round(1e6 * cpu.get("fleet", 0.0) / max(1, frames), 2),
            "loop_delay_ms": {"p50": percentile(delays, 0.5), "p99": percentile(delays, 0.99)},
        },
        "cpu_seconds": cpu,
        "machine": {
            "busy_cores": round(busy / wall, 2),
            "others_cores": round(max(0.0, busy - cpu["total"]) / wall, 2),
            "load_avg_1m_before": round(load_before, 2),
        },
    }
    if metrics_before and metrics_after:

        def delta(name: str) -> float:
            return _metric(metrics_after, name) - _metric(metrics_before, name)

        ticks = delta("scoreboard_broadcaster_ws_tick_seconds_count")
        result["broadcaster"] = {
            "tick_ms_mean": round(
                1000 * delta("scoreboard_broadcaster_ws_tick_seconds_sum") / ticks, 2
            )
            if ticks
            else None,
            "apply_lag_ms_mean": round(
                1000
                * delta("scoreboard_broadcaster_board_event_lag_seconds_sum")
                / max(1.0, delta("scoreboard_broadcaster_board_event_lag_seconds_count")),
                1,
            ),
            "top_frames_sent": delta('scoreboard_broadcaster_ws_frames_sent_total{type="top"}'),
            "slow_skips": delta("scoreboard_broadcaster_ws_slow_skips_total"),
            "slow_closes": delta("scoreboard_broadcaster_ws_slow_closes_total"),
        }
    return result


# -- the run -------------------------------------------------------------------------------------


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or not theirs:
        return None
    return round(ours / theirs, 2)


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 2) if known else None


def summarise(trials: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    """Per size: each server's medians over the rounds, the ratios ours/Centrifugo, the targets."""
    rows = []
    for n in sizes:
        per: dict[str, dict[str, float | None]] = {}
        for name in SERVERS:
            mine = [t for t in trials if t["clients"] == n and t["server"] == name]
            if not mine:
                continue
            per[name] = {
                "p50_ms": _median([t["lag_ms"]["p50"] for t in mine]),
                "p99_ms": _median([t["lag_ms"]["p99"] for t in mine]),
                "frames_per_client_per_s": _median([t["frames_per_client_per_s"] for t in mine]),
                "cpu_us_per_frame": _median([t["server_cpu"]["us_per_frame"] for t in mine]),
                "server_cores": _median([t["server_cpu"]["cores"] for t in mine]),
                "kib_per_idle_connection": _median(
                    [t["memory"]["kib_per_idle_connection"] for t in mine]
                ),
                "fleet_cores": _median([t["fleet"]["cpu_cores"] for t in mine]),
                "fleet_loop_delay_p99_ms": _median(
                    [t["fleet"]["loop_delay_ms"]["p99"] for t in mine]
                ),
                "machine_busy_cores": _median([t["machine"]["busy_cores"] for t in mine]),
            }
        ours, theirs = per.get("broadcaster", {}), per.get("centrifugo", {})
        ratios = {
            key: _ratio(ours.get(key), theirs.get(key))
            for key in ("p50_ms", "p99_ms", "cpu_us_per_frame", "kib_per_idle_connection")
        }
        p99s = [s["p99_ms"] for s in per.values() if s["p99_ms"] is not None]
        target = TARGET_P99_MS.get(n)
        rows.append(
            {
                "clients": n,
                "servers": per,
                "ratios_ours_to_centrifugo": ratios,
                "targets": {
                    "p99_ms": target,
                    "p99_met": None
                    if target is None or ours.get("p99_ms") is None
                    else ours["p99_ms"] <= target,  # type: ignore[operator]
                    "ahead_of_centrifugo": None
                    if ratios["p99_ms"] is None
                    else ratios["p99_ms"] < 1.0,
                    "kib_per_idle_connection": TARGET_KIB_PER_CONNECTION,
                },
                # The fleet measured this p99 at this size: a faster server would have shown.
                "fleet_saw_p99_ms_down_to": min(p99s) if p99s else None,
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The summary as text, numbers next to their targets."""
    out = [
        f"{'clients':>7} {'server':<12} {'p50':>7} {'p99':>7} {'target':>6} {'fr/c/s':>6} "
        f"{'us/fr':>6} {'KiB/c':>6} {'srv':>5} {'fleet':>5} {'loop99':>6}"
    ]

    def cell(v: object, width: int) -> str:
        return f"{'-' if v is None else v!s:>{width}}"

    for row in rows:
        for name, s in row["servers"].items():
            target = row["targets"]["p99_ms"] if name == "broadcaster" else None
            out.append(
                f"{row['clients']:>7} {name:<12} {cell(s['p50_ms'], 7)} {cell(s['p99_ms'], 7)} "
                f"{cell(target, 6)} {cell(s['frames_per_client_per_s'], 6)} "
                f"{cell(s['cpu_us_per_frame'], 6)} {cell(s['kib_per_idle_connection'], 6)} "
                f"{cell(s['server_cores'], 5)} {cell(s['fleet_cores'], 5)} "
                f"{cell(s['fleet_loop_delay_p99_ms'], 6)}"
            )
        r = row["ratios_ours_to_centrifugo"]
        out.append(
            f"{'':>7} {'ours/cf':<12} {cell(r['p50_ms'], 7)} {cell(r['p99_ms'], 7)} {'< 1':>6} "
            f"{'':>6} {cell(r['cpu_us_per_frame'], 6)} {cell(r['kib_per_idle_connection'], 6)}"
        )
    out.append(
        "lag in ms (publish -> receipt); fr/c/s: frames per client per second; us/fr: server CPU"
        " per delivered frame; KiB/c: RSS per idle connection (target <= 16); srv, fleet: cores"
        " used; loop99: the fleet's event-loop delay p99 (ms)"
    )
    return "\n".join(out)


def chart(rows: list[dict[str, Any]], path: Path) -> None:
    """p99 lag, CPU per frame and memory per connection against the number of clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"broadcaster": "#2563eb", "centrifugo": "#f97316", "bare": "#9ca3af"}
    panels = (
        ("p99_ms", "delivery lag p99 (ms)", True),
        ("cpu_us_per_frame", "server CPU per delivered frame (µs)", False),
        ("kib_per_idle_connection", "RSS per idle connection (KiB)", False),
    )
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for name, colour in colours.items():
            points = [
                (row["clients"], row["servers"][name][key])
                for row in rows
                if name in row["servers"] and row["servers"][name][key] is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", color=colour, label=name)
        if key == "p99_ms":
            sizes = {r["clients"] for r in rows}
            targets = [(n, t) for n, t in TARGET_P99_MS.items() if n in sizes]
            if targets:
                xs, ys = zip(*targets, strict=True)
                ax.scatter(xs, ys, marker="_", s=400, color="#dc2626", label="target (ours)")
        if key == "kib_per_idle_connection":
            ax.axhline(TARGET_KIB_PER_CONNECTION, color="#dc2626", linestyle="--", label="target")
        ax.set_xscale("log")
        if log:
            ax.set_yscale("log")
        ax.set_xticks([r["clients"] for r in rows], [f"{r['clients']:,}" for r in rows])
        ax.set_xlabel("clients")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Fan-out of a top-10 frame, 10 publications/s, one machine (2 cores)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def machine() -> dict[str, Any]:
    """The machine the run was on."""
    model = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return {"cpus": os.cpu_count(), "cpu_model": model, "load_avg_1m": os.getloadavg()[0]}


def raise_fd_limit(needed: int) -> int:
    """Raise the open-files limit (soft and, when allowed, hard) for us and our children."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
    except (ValueError, OSError):  # not allowed to raise the hard limit: go as far as it
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Create the slice and the producer, run every trial, clean up."""
    opts = Options(
        args.seconds, args.rate, args.arrivals, args.procs, args.nice, args.warm, args.profile
    )
    players = [new_player("bench") for _ in range(10)]
    for i, p in enumerate(players):
        p.gain(1000 + i, datetime.now(UTC))
    env: TestEnv | None = None
    producer: AIOKafkaProducer | None = None
    starters: dict[str, Callable[[int], Awaitable[Server]]] = {}
    skipped: dict[str, str] = {}
    trials: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []  # trials a server did not get through
    try:
        if "broadcaster" in args.servers:
            env = await create_test_env(LOCAL_INFRA)
            conn = await asyncpg.connect(env.postgres_dsn)
            try:
                await seed(conn, players)
            finally:
                await conn.close()
            # One change at a time: no batching to wait for (linger 0).
            # ScoreChanged is the score service's to write (Kafka ACLs): publish as it would.
            producer = make_producer(
                CommonSettings.load(**env.overrides(), **env.kafka_user(SCORE)),
                client_id="bench-fanout",
                linger_ms=0,
            )
            await producer.start()
            ours = Broadcaster(env, producer, players)
            starters["broadcaster"] = ours.start
        if "centrifugo" in args.servers:
            try:
                await asyncio.to_thread(centrifugo.binary)
                starters["centrifugo"] = lambda n: Centrifugo().start(n)
            except centrifugo.CentrifugoUnavailable as exc:
                skipped["centrifugo"] = str(exc)
                print(f"centrifugo skipped: {exc}", file=sys.stderr)
        if "bare" in args.servers:
            starters["bare"] = lambda n: Bare().start(n)
        names = [s for s in SERVERS if s in starters]
        for r in range(args.rounds):
            for i, n in enumerate(args.clients):
                k = (i + r) % len(names)
                for name in names[k:] + names[:k]:  # alternate who goes first
                    print(f"-- {n} clients, {name} (round {r + 1})", file=sys.stderr, flush=True)
                    try:
                        result = await trial(starters[name], n, players, opts)
                    except (OSError, RuntimeError, HttpConnectionClosed) as exc:
                        # A server that gives up at this size (a publish unanswered, a crash)
                        # is a result too: noted, and the run goes on with the next trial.
                        failed.append(
                            {"server": name, "clients": n, "round": r + 1, "error": repr(exc)}
                        )
                        print(f"   failed: {exc!r}", file=sys.stderr, flush=True)
                        continue
                    result["round"] = r + 1
                    trials.append(result)
                    print(
                        f"   p50 {result['lag_ms']['p50']} ms, p99 {result['lag_ms']['p99']} ms,"
                        f" {result['frames_per_client_per_s']} frames/client/s,"
                        f" {result['server_cpu']['us_per_frame']} us/frame,"
                        f" {result['memory']['kib_per_idle_connection']} KiB/conn,"
                        f" fleet {result['fleet']['cpu_cores']} cores",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        if producer is not None:
            await producer.stop()
        if env is not None:
            await drop_test_env(LOCAL_INFRA, env)

    rows = summarise(trials, args.clients)
    headline: dict[str, float] = {}
    targets: dict[str, float] = {}
    for row in rows:
        for name in ("broadcaster", "centrifugo"):
            p99 = row["servers"].get(name, {}).get("p99_ms")
            if p99 is not None:
                headline[f"{name}_p99_ms_{row['clients']}_clients"] = p99
        if row["targets"]["p99_ms"] is not None:
            targets[f"broadcaster_p99_ms_{row['clients']}_clients"] = row["targets"]["p99_ms"]
    largest = rows[-1]["servers"].get("broadcaster", {}) if rows else {}
    if largest.get("kib_per_idle_connection") is not None:
        headline["broadcaster_kib_per_idle_connection"] = largest["kib_per_idle_connection"]
        targets["broadcaster_kib_per_idle_connection"] = TARGET_KIB_PER_CONNECTION
    return {
        "benchmark": "fanout",
        "centrifugo_version": centrifugo.VERSION,
        "arrivals": args.arrivals,
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "sizes": rows,
        "headline": headline,
        "targets": targets,
        "skipped": skipped,
        "trials": trials,
        "failed_trials": failed,
        "machine": machine(),
        "run_id": uuid.uuid4().hex[:8],
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def main() -> None:
    """Parse arguments, run, print the table and the JSON, write them to bench/results/."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=None,
        help="client counts (default 1000,5000,10000,20000; --quick: 1000,5000)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="publishing time per trial")
    parser.add_argument("--rate", type=float, default=10.0, help="publications per second")
    parser.add_argument("--arrivals", choices=("fixed", "poisson"), default="fixed")
    parser.add_argument("--procs", type=int, default=4, help="client processes")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the client processes")
    parser.add_argument("--warm", type=int, default=200, help="connections before RSS is noted")
    parser.add_argument(
        "--servers", type=lambda s: s.split(","), default=list(SERVERS), help=",".join(SERVERS)
    )
    parser.add_argument("--rounds", type=int, default=1, help="alternating rounds (medians)")
    parser.add_argument("--quick", action="store_true", help="1,000 and 5,000 clients, 5 s each")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write py-spy profiles of the Python servers here (run with: uv run --with py-spy)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "fanout.json")
    args = parser.parse_args()
    if args.clients is None:
        args.clients = [1000, 5000] if args.quick else [1000, 5000, 10_000, 20_000]
    if args.seconds is None:
        args.seconds = 5.0 if args.quick else 10.0
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    raise_fd_limit(2 * max(args.clients) + 4096)
    result = asyncio.run(run(args))
    print(table(result["sizes"]), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    chart(result["sizes"], args.out.with_suffix(".png"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
