"""CPU per update on the gateway with tracing off, on without recording, and recording everything.

The gateway app runs in this process on a fresh slice of the local servers (testkit's, as the
tests do), with a stand-in auth for its JWKS; tickets are issued before the measured window, then
``--updates`` updates are submitted one after another and the process's CPU time is divided by
their number. The client is an aiohttp session opened before any instrumentation, so its own cost
is the same in every mode and the differences are the gateway's. Each mode runs in a process of its
own (the instrumentations patch classes process-wide), alternating ``--rounds`` times:

- ``off``: no tracer provider, no instrumentation (``OTEL_SDK_DISABLED=true``);
- ``ids``: what a service does without an exporter: the instrumentations on, spans not recorded
  (ids only, for the logs and the Kafka headers);
- ``record``: ``OTEL_TRACES_SAMPLER=always_on``, every span recorded and handed to an in-memory
  exporter (a collector's cost is not included).

    uv run python bench/bench_tracing_overhead.py [--updates 1500] [--rounds 3]

Prints one JSON line per run and a summary (median CPU µs per update per mode).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aiohttp
from aiohttp.test_utils import TestServer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the gateway tests' support (token minting, a stand-in auth)
MODES = ("off", "ids", "record")


async def _run(mode: str, updates: int) -> dict[str, object]:
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from common.tracing import configure_tracing
    from gateway.app import create_app
    from gateway.catalog import DEFAULT_CATALOG
    from gateway.components import components_key
    from gateway.settings import Settings
    from services.gateway.tests.support import SigningKey, TokenMint, Upstream, bearer
    from testkit.env import LOCAL_INFRA, create_test_env, drop_test_env

    session = aiohttp.ClientSession()  # before the instrumentations: not traced itself
    env = await create_test_env(LOCAL_INFRA, partitions=1)
    exporter = InMemorySpanExporter()
    if mode == "off":
        os.environ["OTEL_SDK_DISABLED"] = "true"
    elif mode == "record":
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
    configure_tracing("gateway")
    provider = trace.get_tracer_provider()
    if mode == "record":
        provider.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    key = SigningKey.ed25519("bench")
    upstream = Upstream(jwks=[key.jwk()])
    up = TestServer(upstream.build(), host="127.0.0.1")
    await up.start_server()
    upstream.server = up
    catalog = {
        n: {"points": s.points, "min_duration_ms": 0, "max_open": updates + 100}
        for n, s in DEFAULT_CATALOG.items()
    }
    settings = Settings.load(
        **env.overrides(),
        auth_url=upstream.url,
        broadcaster_url=upstream.url,
        static_dir=ROOT / "services/gateway/src/gateway/static",
        action_hmac_keys="t1:bench-hmac-secret-0123456789",
        action_catalog=catalog,
        points_budget_per_minute=1_000_000_000,
        update_rate_per_user=1e6,
        update_burst_per_user=1_000_000,
        update_rate_per_address=1e6,
        update_burst_per_address=1_000_000,
        actions_rate_per_address=1e6,
        actions_burst_per_address=1_000_000,
        log_level="WARNING",
    )
    app = create_app(settings)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        await app[components_key].publisher.wait_started()
        auth = bearer(TokenMint(key).mint(uuid.uuid4(), sid=str(uuid.uuid4())))
        base = str(server.make_url(""))
        bodies = []
        for _ in range(updates + 50):
            async with session.post(
                f"{base}/api/actions", json={"action_type": "tap"}, headers=auth
            ) as resp:
                assert resp.status == 201, await resp.text()
                t = await resp.json()
            bodies.append({k: t[k] for k in ("action_id", "action_type", "action_hash")})
        for body in bodies[:50]:  # warm-up
            async with session.post(
                f"{base}/api/scoreboard/update", json=body, headers=auth
            ) as resp:
                assert resp.status == 202, await resp.text()
        cpu, wall = time.process_time(), time.perf_counter()
        for body in bodies[50:]:
            async with session.post(
                f"{base}/api/scoreboard/update", json=body, headers=auth
            ) as resp:
                assert resp.status == 202, await resp.text()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await server.close()
        await up.close()
        await session.close()
        await drop_test_env(LOCAL_INFRA, env)
    return {
        "mode": mode,
        "updates": updates,
        "cpu_us_per_update": round(cpu / updates * 1e6, 1),
        "wall_us_per_update": round(wall / updates * 1e6, 1),
        "spans_recorded": len(exporter.get_finished_spans()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # one run (a child)
    args = parser.parse_args()
    if args.mode:
        print(json.dumps(asyncio.run(_run(args.mode, args.updates))))
        return
    results: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(args.rounds):
        for mode in MODES:
            out = (
                subprocess.run(
                    [sys.executable, __file__, "--mode", mode, "--updates", str(args.updates)],
                    check=True,
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                    env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            print(out, flush=True)
            results[mode].append(json.loads(out)["cpu_us_per_update"])
    summary = {m: statistics.median(v) for m, v in results.items()}
    print(json.dumps({"median_cpu_us_per_update": summary}))


if __name__ == "__main__":
    main()
