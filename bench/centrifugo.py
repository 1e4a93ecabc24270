"""Centrifugo for the side-by-side fan-out benchmark: built at a pinned version, run on a free port.

The binary is built with ``go install`` from the Go module proxy into a cache directory outside
the repository (``~/.cache/scoreboard/bench/centrifugo-<version>``, or ``$XDG_CACHE_HOME``), once
(about three minutes on two cores); ``SCOREBOARD_BENCH_CENTRIFUGO`` names a binary to use instead.
It runs with the memory engine, anonymous connections allowed to subscribe to channels without
a namespace (a public board needs nothing more), an HTTP API key, and otherwise Centrifugo v6's
defaults (GOMAXPROCS: every core). The publisher posts to ``/api/publish``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bench.loadgen import HttpClient
from testkit.broadcaster import http_get

VERSION: Final = "v6.9.1"
MODULE: Final = "github.com/centrifugal/centrifugo/v6"
CHANNEL: Final = "board"
API_KEY: Final = "bench-api-key"  # loopback only, a throwaway process
# The JSON protocol: connect (anonymous), then subscribe; several commands go in one message.
HELLO: Final = b'{"id":1,"connect":{}}\n{"id":2,"subscribe":{"channel":"board"}}'
SUBSCRIBED: Final = b'"id":2,"subscribe"'


class CentrifugoUnavailable(RuntimeError):
    """No binary, and it could not be built (no Go toolchain, no module proxy)."""


def cache_dir() -> Path:
    """Where the built binary is kept between runs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "scoreboard" / "bench" / f"centrifugo-{VERSION}"


def binary() -> Path:
    """The Centrifugo binary: the named one, the cached one, or one built now."""
    named = os.environ.get("SCOREBOARD_BENCH_CENTRIFUGO")
    if named:
        return Path(named)
    path = cache_dir() / "centrifugo"
    if path.exists():
        return path
    go = shutil.which("go")
    if go is None:
        raise CentrifugoUnavailable("no Go toolchain to build Centrifugo with (go install)")
    path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOBIN": str(path.parent), "CGO_ENABLED": "0"}
    built = subprocess.run(
        [go, "install", f"{MODULE}@{VERSION}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if built.returncode != 0 or not path.exists():
        raise CentrifugoUnavailable(f"go install {MODULE}@{VERSION} failed: {built.stderr[-2000:]}")
    return path


def config(port: int) -> dict[str, object]:
    """Centrifugo v6's configuration for the benchmark (everything else at its defaults)."""
    return {
        "http_server": {"address": "127.0.0.1", "port": port},
        "engine": {"type": "memory"},
        "http_api": {"key": API_KEY},
        "client": {"allow_anonymous_connect_without_token": True, "allowed_origins": ["*"]},
        "channel": {
            "without_namespace": {
                "allow_subscribe_for_client": True,
                "allow_subscribe_for_anonymous": True,
            }
        },
        "health": {"enabled": True},
        "log": {"level": "error"},
        "usage_stats": {"disabled": True},
    }


@dataclass
class Centrifugo:
    """A running Centrifugo process and an HTTP client for its publish API."""

    port: int
    proc: subprocess.Popen[bytes]
    workdir: tempfile.TemporaryDirectory[str]
    api: HttpClient = field(init=False)

    def __post_init__(self) -> None:
        self.api = HttpClient("127.0.0.1", self.port, max_connections=4)

    @classmethod
    def start(cls, port: int) -> Centrifugo:
        """Start it on ``port`` and wait until ``/health`` answers."""
        exe = binary()
        workdir = tempfile.TemporaryDirectory(prefix="bench-centrifugo-")
        path = Path(workdir.name) / "config.json"
        path.write_text(json.dumps(config(port)))
        proc = subprocess.Popen(
            [str(exe), "--config", str(path)], cwd=workdir.name, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                workdir.cleanup()
                raise CentrifugoUnavailable(f"centrifugo exited with {proc.returncode}")
            try:
                http_get(f"http://127.0.0.1:{port}/health")
                return cls(port, proc, workdir)
            except (OSError, urllib.error.URLError):
                time.sleep(0.1)
        proc.kill()
        proc.wait()
        workdir.cleanup()
        raise CentrifugoUnavailable("centrifugo did not answer /health within 30 s")

    async def publish(self, data: bytes) -> None:
        """Publish one JSON document to the board channel (every subscriber gets it)."""
        body = b'{"channel":"' + CHANNEL.encode() + b'","data":' + data + b"}"
        status, reply = await self.api.post("/api/publish", body, {"X-API-Key": API_KEY})
        if status != 200 or b'"error"' in reply:
            raise RuntimeError(f"centrifugo publish: {status} {reply[:200]!r}")

    async def stop(self) -> None:
        """Close the API client, stop the process, remove its directory."""
        await self.api.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.workdir.cleanup()
