"""A private three-master Redis Cluster on free ports, for the tests that run on a cluster.

The nodes are ``redis-server --cluster-enabled yes`` processes started by scripts/infra.py's
:func:`launch_redis_cluster` with their data in a directory of the caller's (a pytest temp
dir), joined with ``redis-cli --cluster create`` (no replicas: slots 0-5460, 5461-10922 and
10923-16383, in port order). The shared Redis on 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from testkit.stack import SHARED_PORTS, alive, free_port, infra, infra_call, wait_gone

MASTERS: Final = 3


def _free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        port = free_port()
        if port not in SHARED_PORTS:
            ports.add(port)
    return sorted(ports)


@dataclass
class LocalRedisCluster:
    """Three masters under ``root``: :meth:`start`, use :attr:`url`, :meth:`stop`."""

    root: Path
    ports: list[int] = field(default_factory=list)
    bus_ports: list[int] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``SCOREBOARD_REDIS_URL`` for the cluster (common.redis_client), every node a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def node_url(self, port: int) -> str:
        """A plain client's URL of one node (for looking at what that node holds)."""
        return f"redis://127.0.0.1:{port}/0"

    def start(self) -> None:
        """Start the nodes and form the cluster; returns once every slot is served."""
        ports = _free_ports(2 * MASTERS)
        self.ports, self.bus_ports = ports[:MASTERS], ports[MASTERS:]
        self.pids = infra_call(infra.launch_redis_cluster, self.root, self.ports, self.bus_ports)

    def stop(self) -> None:
        """Stop every node (SIGTERM, SIGKILL after 10 s); the data is thrown away."""
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in self.pids:
            wait_gone(pid, timeout=10)
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                wait_gone(pid)
        self.pids = []


@contextlib.contextmanager
def local_redis_cluster(root: Path) -> Iterator[LocalRedisCluster]:
    """A started :class:`LocalRedisCluster`, stopped on exit."""
    cluster = LocalRedisCluster(root)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
