"""CPU time per component, read from /proc: where a benchmark's cycles went.

Everything in these benchmarks shares one machine, so a throughput number means little without
knowing who used the cores. :class:`CpuMeter` sums user+system time per named group of processes
(a service's pid, or every process whose command line matches, e.g. all PostgreSQL backends)
between two snapshots.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from testkit.broadcaster import cpu_seconds

# Groups found by command line: (name, predicate on argv).
INFRA: tuple[tuple[str, Callable[[list[str]], bool]], ...] = (
    ("kafka", lambda argv: "kafka.Kafka" in argv),
    ("postgres", lambda argv: bool(argv) and argv[0].startswith("postgres")),
    ("redis", lambda argv: bool(argv) and "redis-server" in argv[0]),
)


def _cpu_seconds(pid: int) -> float | None:
    try:
        return cpu_seconds(pid)
    except OSError:  # the process exited
        return None


def _argv(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _all_pids() -> Iterable[int]:
    return (int(p) for p in os.listdir("/proc") if p.isdigit())


class CpuMeter:
    """CPU seconds per group between :meth:`start` and :meth:`stop`.

    ``pids`` maps known processes (the services, this load generator) to their group; several
    processes may share one (the gateway's replicas). Infrastructure processes are found by
    command line at each snapshot. A process that exits between the snapshots is not
    counted, one that starts is counted from zero.
    """

    def __init__(self, pids: dict[int, str]) -> None:
        self._pids = pids
        self._before: dict[int, float] = {}
        self._wall = 0.0

    def _snapshot(self) -> dict[int, float]:
        return {pid: cpu for pid in _all_pids() if (cpu := _cpu_seconds(pid)) is not None}

    def _group(self, pid: int) -> str | None:
        if pid in self._pids:
            return self._pids[pid]
        argv = _argv(pid)
        for name, matches in INFRA:
            if matches(argv):
                return name
        return None

    def start(self) -> None:
        """Take the first snapshot."""
        self._before = self._snapshot()
        self._wall = _uptime()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group since :meth:`start`, plus ``wall`` and ``total`` (all groups)."""
        after = self._snapshot()
        used: dict[str, float] = {}
        for pid, cpu in after.items():
            group = self._group(pid)
            if group is None:
                continue
            used[group] = used.get(group, 0.0) + cpu - self._before.get(pid, 0.0)
        result = {name: round(seconds, 2) for name, seconds in sorted(used.items())}
        result["total"] = round(sum(used.values()), 2)
        result["wall"] = round(_uptime() - self._wall, 2)
        return result


def _uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (all processes, /proc/stat).

    The difference of two readings, less what :class:`CpuMeter` attributed, is what other work
    on the machine (other people's tests, say) took during a run.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
