"""End-to-end latency: the update request → its 202 → the WebSocket frame showing the new score.

Starts the four services on a fresh slice of the local servers (its own database, topics, Redis
prefix), signs up players, opens one WebSocket per player through the gateway (so each gets its
`me` frames), pre-issues action tickets, then submits updates open-loop at the target rate and
measures, per player, the time from the k-th 202 to the first `me` frame with score >= k, and
the player's whole wait ("click to screen"): from sending that update request to the same frame.

    uv run python bench/bench_e2e_latency.py [--rate 1000] [--seconds 10] [--players 200]
                                             [--gateways 2] [--rates 250,1000,2000]

Prints one JSON line. Targets: click to screen p99 <= 250 ms at 1,000 updates/s (and 202 to
screen p99 <= 250 ms). Everything runs on this
one 2-core machine (Kafka, PostgreSQL, Redis, four services and this load generator), so the
achieved rate is reported next to the asked one, and ``cpu_ms_per_update`` shows who used the
cores during the measured window (``load_generator`` is this process).

The measured part (the WebSockets and the update POSTs) uses the lean clients of
``bench/loadgen.py`` (bare asyncio protocols) rather than aiohttp's client, whose CPU per request
and per received frame was taken from the very services being measured. The update requests are
encoded before the window opens and sent over keep-alive connections; ``me`` frames are picked out
by a substring test before any JSON decoding, the other frames are never decoded. Both ends of a
latency are stamped when their bytes arrive (in ``data_received``), not when a task gets to run.
Signups stay on aiohttp, outside the window.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.cpu import CpuMeter
from bench.loadgen import HttpClient, HttpConnectionClosed, HttpProtocolError, WsWatcher
from common.runner import tune_gc
from testkit.env import LOCAL_INFRA, create_test_env, drop_test_env
from tests.e2e.harness import Player, register_and_login, start_system

# Tickets are issued ahead (the update path is what is measured): many open per player.
CATALOG = {"tap": {"points": 1, "min_duration_ms": 0, "max_open": 10_000}}
UNLIMITED = "1000000"
HOST = "127.0.0.1"
UPDATE_PATH = "/api/scoreboard/update"
ME = b'"me"'  # in every `me` frame's payload; frames without it are not decoded


@dataclass
class Track:
    """One player's accepted submissions and the scores their WebSocket showed."""

    token: str
    accepted_at: list[float] = field(default_factory=list)
    # (202 time, send time) per accepted update: the player's wait starts at the send.
    sent_of: dict[float, float] = field(default_factory=dict)
    accepted_ids: dict[str, float] = field(default_factory=dict)  # action id -> 202 time
    seen: list[tuple[float, int]] = field(default_factory=list)  # (time, score) of `me` frames

    def on_text(self, arrived: float, payload: bytes) -> None:
        """A text frame that mentions "me" (the watcher filters on that): keep `me` scores."""
        frame = json.loads(payload)
        if frame.get("type") == "me":
            self.seen.append((arrived, int(frame["score"])))


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of values, by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def run(rate: float, seconds: float, players: int, gateways: int) -> dict[str, object]:
    """Drive the system and measure."""
    env = await create_test_env(LOCAL_INFRA, partitions=12)
    limits = {
        f"SCOREBOARD_{k}": UNLIMITED
        for k in (
            "UPDATE_RATE_PER_USER",
            "UPDATE_BURST_PER_USER",
            "UPDATE_RATE_PER_ADDRESS",
            "UPDATE_BURST_PER_ADDRESS",
            "ACTIONS_RATE_PER_ADDRESS",
            "ACTIONS_BURST_PER_ADDRESS",
            "AUTH_RATE_PER_ADDRESS",
            "AUTH_BURST_PER_ADDRESS",
            "REGISTER_RATE_PER_ADDRESS",
            "REGISTER_BURST_PER_ADDRESS",
            "REGISTER_RATE_GLOBAL",
            "REGISTER_BURST_GLOBAL",
            "WS_CONNECT_RATE_PER_ADDRESS",
            "WS_CONNECT_BURST_PER_ADDRESS",
            "WS_MAX_PER_ADDRESS",
        )
    }
    system = start_system(
        env,
        {
            "SCOREBOARD_ACTION_CATALOG": json.dumps(CATALOG),
            "SCOREBOARD_LOG_LEVEL": "WARNING",
            **limits,
        },
        gateways=gateways,
    )
    gateway = system.gateway
    port = system.services["gateway"].port
    client = HttpClient(HOST, port, max_connections=256)
    watchers: list[WsWatcher] = []
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64)) as http:
            signups = asyncio.Semaphore(8)  # auth sheds load beyond its password-hashing queue

            async def signup(i: int) -> Player:
                async with signups:
                    return await register_and_login(http, gateway, f"bench{i:05d}")

            accounts = await asyncio.gather(*(signup(i) for i in range(players)))
        tracks = [Track(a.access_token) for a in accounts]
        for track in tracks:  # connect gradually: a thundering herd is not what we measure
            watchers.append(
                await WsWatcher.connect(
                    HOST,
                    port,
                    "/ws/scoreboard",
                    track.on_text,
                    protocols=("bearer", track.token),
                    want=ME,
                )
            )
            await asyncio.sleep(0.005)
        await asyncio.sleep(1.0)

        total = int(rate * seconds)
        sem = asyncio.Semaphore(32)  # also leaves 32 warm connections for the measured part
        ticket_body = json.dumps({"action_type": "tap"}).encode()

        async def ticket(track: Track) -> tuple[str, bytes]:
            """A ticket, redeemed as a ready-to-send update request (with its action id)."""
            async with sem:
                status, body = await client.post(
                    "/api/actions", ticket_body, {"Authorization": f"Bearer {track.token}"}
                )
            assert status == 201, body
            tk = json.loads(body)
            update = {k: tk[k] for k in ("action_id", "action_type", "action_hash")}
            return tk["action_id"], client.encode_post(
                UPDATE_PATH,
                json.dumps(update).encode(),
                {"Authorization": f"Bearer {track.token}"},
            )

        owners = [tracks[i % players] for i in range(total)]
        requests = await asyncio.gather(*(ticket(t) for t in owners))

        statuses: dict[int | str, int] = {}

        async def submit(track: Track, action_id: str, raw: bytes) -> None:
            sent = time.perf_counter()
            try:
                status, _, at = await client.send_timed(raw)
            except (HttpConnectionClosed, HttpProtocolError) as exc:
                key = f"error:{type(exc).__name__}"
                statuses[key] = statuses.get(key, 0) + 1
                return
            statuses[status] = statuses.get(status, 0) + 1
            if status == 202:
                track.accepted_at.append(at)
                track.sent_of[at] = sent
                track.accepted_ids[action_id] = at

        meter = CpuMeter(
            {svc.proc.pid: svc.module or svc.name for svc in system.services.values() if svc.proc}
            | {os.getpid(): "load_generator"}
        )
        print(f"submitting {total} updates at {rate:g}/s", file=sys.stderr, flush=True)
        # The load generator's own collector pauses would delay its timestamps: as the services.
        tune_gc()
        meter.start()
        start = time.perf_counter()
        tasks = []
        for i, (track, (action_id, raw)) in enumerate(zip(owners, requests, strict=True)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(submit(track, action_id, raw)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        cpu = meter.stop()
        await asyncio.sleep(3.0)  # let the last frames arrive
        dropped = sum(1 for w in watchers if w.closed.done())
        if dropped:
            print(f"{dropped} WebSockets closed before the end", file=sys.stderr, flush=True)
        stages = await stage_breakdown(env.postgres_dsn, tracks)
    finally:
        await asyncio.gather(*(w.close() for w in watchers), return_exceptions=True)
        await client.close()
        system.stop()
        await drop_test_env(LOCAL_INFRA, env)

    latencies: list[float] = []
    click_to_screen: list[float] = []  # from sending the request to the frame
    missing = 0
    for track in tracks:
        accepted = sorted(track.accepted_at)
        times = [t for t, _ in track.seen]
        scores = [s for _, s in track.seen]
        best = 0
        running_max = []
        for s in scores:
            best = max(best, s)
            running_max.append(best)
        for k, t202 in enumerate(accepted, start=1):
            idx = bisect.bisect_left(running_max, k)
            if idx == len(running_max):
                missing += 1
                continue
            latencies.append(max(0.0, times[idx] - t202) * 1000)
            click_to_screen.append(max(0.0, times[idx] - track.sent_of[t202]) * 1000)
    result: dict[str, object] = {
        "asked_rate": rate,
        "achieved_rate": round(total / elapsed, 1),
        "updates": total,
        "statuses": statuses,
        "players": players,
        "gateways": gateways,
        "never_seen": missing,
        "players_with_me_frames": sum(1 for t in tracks if t.seen),
        "cpu_seconds": cpu,
        "cpu_ms_per_update": {k: round(v * 1000 / total, 3) for k, v in cpu.items() if k != "wall"},
    }
    if latencies:
        result.update(
            {
                "p50_ms": round(statistics.median(latencies), 1),
                "p99_ms": round(percentile(latencies, 99), 1),
                "max_ms": round(max(latencies), 1),
                # The player's whole wait: the update request sent -> the frame with the score.
                "click_to_screen_p50_ms": round(statistics.median(click_to_screen), 1),
                "click_to_screen_p99_ms": round(percentile(click_to_screen, 99), 1),
            }
        )
        result["stages_ms"] = stages
        result["headline"] = {
            "click_to_screen_p99_ms": result["click_to_screen_p99_ms"],
            "p99_ms": result["p99_ms"],
            "achieved_rate": result["achieved_rate"],
        }
        result["targets"] = {"click_to_screen_p99_ms": 250, "p99_ms": 250, "achieved_rate": rate}
    return result


STAGES_SQL = """
SELECT a.action_id::text,
       extract(epoch FROM a.accepted_at) AS accepted,
       extract(epoch FROM a.applied_at) AS applied,
       extract(epoch FROM o.sent_at) AS published,
       a.version
FROM actions a
JOIN outbox o ON (convert_from(o.payload, 'UTF8')::jsonb #>> '{data,action_id}') = a.action_id::text
"""


async def stage_breakdown(dsn: str, tracks: list[Track]) -> dict[str, dict[str, float]]:
    """Where the time went, per accepted update, from the timestamps the system itself keeps.

    - ``accepted_to_202``: the gateway built the command (``actions.accepted_at``) → the client
      had its 202 (the Kafka acknowledgement and the response);
    - ``accepted_to_applied``: → the score service's transaction began (``applied_at``): Kafka,
      the consumer's fetch and batch;
    - ``applied_to_published``: → the outbox relay marked the event sent (``outbox.sent_at``,
      after Kafka acknowledged it): the transaction, its NOTIFY and the relay's round;
    - ``published_to_frame``: → the player's `me` frame arrived: the broadcaster's fetch, the
      Redis board, the fan-out tick and the gateway's WebSocket proxy. The broadcaster can read
      an event before the relay marks it, so this stage is slightly under and the previous one
      slightly over.

    All on one host: PostgreSQL's clock is the client's. Scores go up 1 per action here, so
    the action of version k is shown by the first `me` frame with score >= k.
    """
    wall_minus_perf = time.time() - time.perf_counter()
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(STAGES_SQL)
    finally:
        await conn.close()
    by_action = {r["action_id"]: r for r in rows}
    spans: dict[str, list[float]] = {
        "accepted_to_202": [],
        "accepted_to_applied": [],
        "applied_to_published": [],
        "published_to_frame": [],
    }
    for track in tracks:
        best = 0
        running_max = []
        for _, s in track.seen:
            best = max(best, s)
            running_max.append(best)
        for action_id, t202 in track.accepted_ids.items():
            row = by_action.get(action_id)
            if row is None:
                continue
            accepted, applied, published = (
                float(row["accepted"]),
                float(row["applied"]),
                float(row["published"]),
            )
            spans["accepted_to_202"].append(t202 + wall_minus_perf - accepted)
            spans["accepted_to_applied"].append(applied - accepted)
            spans["applied_to_published"].append(published - applied)
            idx = bisect.bisect_left(running_max, row["version"])
            if idx < len(running_max):
                frame_at = track.seen[idx][0] + wall_minus_perf
                spans["published_to_frame"].append(frame_at - published)
    return {
        name: {
            "p50": round(statistics.median(values) * 1000, 1),
            "p99": round(percentile(values, 99) * 1000, 1),
        }
        for name, values in spans.items()
        if values
    }


def main() -> None:
    """Parse the arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--players", type=int, default=200)
    parser.add_argument(
        "--gateways", type=int, default=2, help="gateway processes sharing the port (as make up)"
    )
    parser.add_argument(
        "--rates",
        help="comma-separated rates to sweep (a fresh system each); prints one JSON with a row "
        "per rate instead of --rate",
    )
    args = parser.parse_args()
    if not args.rates:
        print(json.dumps(asyncio.run(run(args.rate, args.seconds, args.players, args.gateways))))
        return
    rows = []
    for rate in (float(r) for r in args.rates.split(",")):
        result = asyncio.run(run(rate, args.seconds, args.players, args.gateways))
        print(json.dumps(result), file=sys.stderr, flush=True)
        cpu = result["cpu_seconds"]
        assert isinstance(cpu, dict)
        rows.append(
            {
                key: result.get(key)
                for key in (
                    "asked_rate",
                    "achieved_rate",
                    "click_to_screen_p50_ms",
                    "click_to_screen_p99_ms",
                    "p50_ms",
                    "p99_ms",
                    "max_ms",
                )
            }
            | {
                "cores_busy": round(cpu["total"] / cpu["wall"], 2),
                "stages_ms": result.get("stages_ms"),
            }
        )
    print(json.dumps({"benchmark": "e2e_latency_sweep", "gateways": args.gateways, "rows": rows}))


if __name__ == "__main__":
    main()
