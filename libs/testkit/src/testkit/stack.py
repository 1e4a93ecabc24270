"""A private PostgreSQL, Redis and Kafka on free ports, for programs and tests that break them.

The chaos run (bench/chaos.py) and the dependency-restart tests kill and restart these servers;
they never touch the shared ones on the default ports that the rest of the suite uses. The
servers are started by scripts/infra.py's ``launch_*`` functions, like the shared ones.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Final

from testkit.env import Infra

ROOT: Final = Path(__file__).resolve().parents[4]
# The shared servers' ports (infra.py's defaults, Kafka's controller) and make up's services.
# 9092/9093: a broker from before SASL may still hold them.
SHARED_PORTS: Final = frozenset({5432, 6379, 9092, 9093, 9094, 9095, 8080, 8081, 8082, 8083})


def _load_infra() -> ModuleType:
    spec = importlib.util.spec_from_file_location("scoreboard_infra", ROOT / "scripts" / "infra.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


infra: Final = _load_infra()


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped) counts as gone.
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    return True


def wait_gone(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def proc_text(pid: int, what: str) -> str:
    try:
        return Path(f"/proc/{pid}/{what}").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@dataclass
class Stack:
    """This run's own PostgreSQL, Redis and Kafka: free ports, data under ``root``."""

    root: Path
    pg_port: int = field(default_factory=free_port)
    redis_port: int = field(default_factory=free_port)
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    kafka: subprocess.Popen[bytes] | None = None
    redis_pid: int | None = None

    @property
    def ports(self) -> dict[str, int]:
        """Where each server listens."""
        return {
            "postgres": self.pg_port,
            "redis": self.redis_port,
            "kafka": self.kafka_port,
            "kafka_controller": self.controller_port,
        }

    @property
    def infra(self) -> Infra:
        """The servers as the test kit names them."""
        return Infra(
            postgres_admin_dsn=(
                f"postgresql://{infra.DB_USER}:{infra.DB_PASSWORD}@127.0.0.1:{self.pg_port}/"
                f"{infra.DB_NAME}"
            ),
            redis_url=f"redis://127.0.0.1:{self.redis_port}/0",
            kafka_bootstrap=f"127.0.0.1:{self.kafka_port}",
        )

    def check_isolated(self) -> None:
        """Refuse to run on a shared port or in the shared state directory."""
        ports = list(self.ports.values())
        if len(set(ports)) != len(ports) or SHARED_PORTS & set(ports):
            raise RuntimeError(f"chaos needs private ports, got {self.ports}")
        if self.root.resolve() in {(ROOT / ".local").resolve(), ROOT.resolve()}:
            raise RuntimeError(f"chaos needs a state directory of its own, not {self.root}")

    def start(self) -> None:
        """Start all three (blocking)."""
        self.check_isolated()
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "ports.json").write_text(json.dumps(self.ports))
        self.start_postgres()
        self.start_redis()
        self.start_kafka()

    def start_postgres(self) -> None:
        """Start PostgreSQL (creating the cluster the first time); returns once it answers."""
        infra_call(infra.launch_postgres, self.root / "postgres", self.pg_port)

    def stop_postgres(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m <mode>``: immediate is a crash (recovery at the next start)."""
        infra.pg_ctl(self.root / "postgres", "stop", "-m", mode, "-w")

    def start_redis(self) -> None:
        """Start Redis on its append-only file; returns once it has loaded it (PING answers
        PONG, not LOADING)."""
        self.redis_pid = infra_call(infra.launch_redis, self.root / "redis", self.redis_port)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.redis_port), timeout=2) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        raise RuntimeError("Redis did not answer PING within 60 s")

    def kill_redis(self) -> None:
        """SIGKILL Redis and wait until it is gone."""
        if self.redis_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.redis_pid, signal.SIGKILL)
            wait_gone(self.redis_pid)
            self.redis_pid = None

    def start_kafka(self) -> None:
        """Start the broker on its data (formatted the first time); returns once it serves."""
        state = self.root / "kafka"
        self.kafka = infra_call(infra.launch_kafka, state, self.kafka_port, self.controller_port)
        (state / "kafka.pid").write_text(str(self.kafka.pid))

    def kill_kafka(self) -> None:
        """SIGKILL the broker and reap it."""
        if self.kafka is not None:
            self.kafka.kill()
            self.kafka.wait()
            self.kafka = None

    def stop(self) -> None:
        """Stop everything (the data is thrown away: no need to be gentle)."""
        with contextlib.suppress(Exception):
            self.kill_kafka()
        with contextlib.suppress(Exception):
            self.kill_redis()
        if (self.root / "postgres" / "data" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop_postgres()


def infra_call(fn: Callable[..., Any], *args: Any) -> Any:
    """scripts/infra.py reports failures with SystemExit; here they are errors like others."""
    try:
        return fn(*args)
    except SystemExit as exc:
        raise RuntimeError(str(exc)) from None
