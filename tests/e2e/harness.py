"""Driving the whole system as real processes: auth, score, broadcaster and gateway on free
ports, wired to this run's isolated database, topics and Redis prefix."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from testkit.env import TestEnv
from testkit.stack import free_port

LOGS = Path(__file__).resolve().parents[2] / "test-artifacts" / "logs"

# Short minimum durations keep the tests quick; the checks themselves are the production ones.
E2E_CATALOG = {
    "quest": {"points": 50, "min_duration_ms": 300},
    "tap": {"points": 1, "min_duration_ms": 0},
}


@dataclass
class Service:
    """One service process."""

    name: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    module: str = ""  # the Python module to run; the name when empty

    @property
    def url(self) -> str:
        """Its base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it, logging to test-artifacts/logs/<name>.log."""
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(LOGS / f"{self.name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module or self.name],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: graceful; SIGKILL: a crash) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until /readyz answers 200, or fail with the log's tail."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout}s: {self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        """The end of its log, for failure messages."""
        path = LOGS / f"{self.name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@dataclass
class System:
    """The four services of one run."""

    services: dict[str, Service] = field(default_factory=dict)

    @property
    def gateway(self) -> str:
        """The public origin."""
        return self.services["gateway"].url

    def stop(self) -> None:
        """Stop every service, the gateway first."""
        for service in reversed(self.services.values()):
            service.stop()


def start_system(
    env: TestEnv,
    extra_env: dict[str, str] | None = None,
    *,
    gateways: int = 1,
    admin_ports: bool = False,
) -> System:
    """Start auth, score, broadcaster and gateway on free ports, wait until all are ready.

    ``gateways`` > 1 starts that many gateway processes sharing the gateway's port
    (SO_REUSEPORT), as replicas on one host: ``gateway``, ``gateway-2``, ...
    With ``admin_ports`` each service serves its operator endpoints on a port of its own, as in
    production (``SCOREBOARD_ADMIN_PORT``): the public port then answers /metrics with 404.
    """
    ports = {name: free_port() for name in ("auth", "score", "broadcaster", "gateway")}
    admin = {name: free_port() if admin_ports else 0 for name in ports}
    base = env.environ()
    base.update(
        {
            "SCOREBOARD_LOG_JSON": "true",
            "SCOREBOARD_AUTH_URL": f"http://127.0.0.1:{ports['auth']}",
            "SCOREBOARD_BROADCASTER_URL": f"http://127.0.0.1:{ports['broadcaster']}",
            # Consumer groups are per run, like the topics.
            "SCOREBOARD_GROUP_ID": f"{env.topic_prefix}score",
            "SCOREBOARD_GROUP_ID_PREFIX": f"{env.topic_prefix}broadcaster",
            "SCOREBOARD_REPLICA_ID": "e2e",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
    )
    system = System()
    try:
        replicas = [(name, name) for name in ports]
        replicas += [(f"gateway-{n}", "gateway") for n in range(2, gateways + 1)]
        for name, module in replicas:
            port = ports[module]
            environ = {
                **base,
                "SCOREBOARD_PORT": str(port),
                "SCOREBOARD_ADMIN_PORT": str(admin[module]),
            }
            # Each as its own PostgreSQL role and Redis user, as deployed.
            if module != "gateway":
                environ["SCOREBOARD_POSTGRES_DSN"] = env.postgres_dsn_as(module)
            if module != "score":
                environ["SCOREBOARD_REDIS_URL"] = env.redis_url_as(module)
            if module == "gateway" and gateways > 1:
                environ["SCOREBOARD_REUSE_PORT"] = "true"
            service = Service(name, port, environ, module=module)
            system.services[name] = service
            service.start()
        for service in system.services.values():
            service.wait_ready()
    except BaseException:
        system.stop()
        raise
    return system


@dataclass
class Player:
    """A registered, logged-in player."""

    user_id: str
    username: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header."""
        return {"Authorization": f"Bearer {self.access_token}"}


async def register_and_login(
    http: aiohttp.ClientSession, gateway: str, username: str, password: str = "correct horse 1"
) -> Player:
    """Sign up through the gateway, then log in."""
    async with http.post(
        f"{gateway}/api/auth/register", json={"username": username, "password": password}
    ) as resp:
        assert resp.status == 201, await resp.text()
        user_id = (await resp.json())["user_id"]
    async with http.post(
        f"{gateway}/api/auth/login", json={"username": username, "password": password}
    ) as resp:
        assert resp.status == 200, await resp.text()
        tokens = await resp.json()
    return Player(user_id, username, password, tokens["access_token"], tokens["refresh_token"])


async def complete_action(
    http: aiohttp.ClientSession,
    gateway: str,
    player: Player,
    action_type: str = "tap",
    *,
    wait_s: int | None = None,
) -> tuple[int, dict[str, object]]:
    """Take a ticket, wait its minimum duration, submit it. Returns (status, body)."""
    async with http.post(
        f"{gateway}/api/actions", json={"action_type": action_type}, headers=player.auth
    ) as resp:
        assert resp.status == 201, await resp.text()
        ticket = await resp.json()
    await asyncio.sleep(E2E_CATALOG[action_type]["min_duration_ms"] / 1000 + 0.05)
    headers = dict(player.auth)
    if wait_s is not None:
        headers["Prefer"] = f"wait={wait_s}"
    body = {k: ticket[k] for k in ("action_id", "action_type", "action_hash")}
    async with http.post(f"{gateway}/api/scoreboard/update", json=body, headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)
