#!/usr/bin/env python3
"""Run the four services as local processes (what `make up` does when no Docker engine answers).

    python3 scripts/services.py start [name ...]   start, wait for /readyz, print where they listen
    python3 scripts/services.py stop  [name ...]   SIGTERM (graceful drain), then SIGKILL after 20 s
    python3 scripts/services.py status

Logs go to .local/logs/<service>.log, pids to .local/run/<service>.pid. Idempotent.

The gateway runs as SCOREBOARD_GATEWAY_REPLICAS processes (default 2) sharing port 8080 with
SO_REUSEPORT, replicas on one host: ``gateway``, ``gateway-2``, ... (one Python process is
one core; the gateway is the busiest service).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".local" / "logs"
PIDS = ROOT / ".local" / "run"
BIN = ROOT / ".venv" / "bin"

# Start order: dependencies first (the gateway proxies to auth and the broadcaster).
SERVICES = {"auth": 8081, "score": 8082, "broadcaster": 8083, "gateway": 8080}


def say(msg: str) -> None:
    print(f"[services] {msg}", flush=True)


def _port(name: str) -> int:
    return int(os.environ.get(f"SCOREBOARD_{name.upper()}_PORT", SERVICES[name]))


def _instances(name: str) -> list[str]:
    """The processes of a service: the gateway has replicas, the others run once."""
    if name != "gateway":
        return [name]
    replicas = max(1, int(os.environ.get("SCOREBOARD_GATEWAY_REPLICAS", "2")))
    return ["gateway"] + [f"gateway-{n}" for n in range(2, replicas + 1)]


def _pid(name: str) -> int | None:
    try:
        pid = int((PIDS / f"{name}.pid").read_text())
        os.kill(pid, 0)
        return pid
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None


def _ready(port: int, path: str = "/readyz") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _listening(pid: int, port: int) -> bool:
    """Whether process ``pid`` has a listening TCP socket on ``port`` (from /proc)."""
    inodes = set()
    try:
        for fd in os.scandir(f"/proc/{pid}/fd"):
            target = os.readlink(fd.path)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                return True
    return False


def start(names: list[str]) -> None:
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    for service in names:
        port = _port(service)
        instances = _instances(service)
        for name in instances:
            _start_one(service, name, port, reuse_port=len(instances) > 1)


def _start_one(service: str, name: str, port: int, *, reuse_port: bool) -> None:
    if _pid(name):
        say(f"{name} already running on :{port}")
        return
    env = {**os.environ, "SCOREBOARD_PORT": str(port)}
    if reuse_port:
        env["SCOREBOARD_REUSE_PORT"] = "true"
    with open(LOGS / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [str(BIN / service)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
    (PIDS / f"{name}.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + 60
    # With replicas the port answers before this process does: wait until it listens, too.
    while not (_listening(proc.pid, port) and _ready(port)):
        if proc.poll() is not None:
            tail = (LOGS / f"{name}.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"[services] {name} exited with {proc.returncode}:\n{tail}")
        if time.monotonic() > deadline:
            raise SystemExit(f"[services] {name} not ready after 60s; see {LOGS / name}.log")
        time.sleep(0.3)
    say(f"{name} ready on http://127.0.0.1:{port} (log .local/logs/{name}.log)")


def stop(names: list[str]) -> None:
    for name in reversed([i for service in names for i in _instances(service)]):
        pid = _pid(name)
        if pid is None:
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            os.kill(pid, signal.SIGKILL)
        (PIDS / f"{name}.pid").unlink(missing_ok=True)
        say(f"{name} stopped")


def status(names: list[str]) -> None:
    for service in names:
        port = _port(service)
        for name in _instances(service):
            pid = _pid(name)
            if pid is None:
                state = "down"
            else:
                state = "ready" if _listening(pid, port) and _ready(port) else "starting"
            say(f"{name:12} :{port}  {state}")


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in {"start", "stop", "status"}:
        raise SystemExit(__doc__)
    names = argv[1:] or list(SERVICES)
    unknown = set(names) - set(SERVICES)
    if unknown:
        raise SystemExit(f"[services] unknown: {', '.join(sorted(unknown))}")
    {"start": start, "stop": stop, "status": status}[argv[0]](names)


if __name__ == "__main__":
    main(sys.argv[1:])
