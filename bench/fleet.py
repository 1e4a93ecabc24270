"""The fan-out benchmark's client fleet: processes of WebSocket watchers that time each delivery.

Each process holds its share of the connections (:class:`bench.loadgen.WsWatcher`, on uvloop)
and runs at a lower priority (``nice``): here the clients share the server's cores, in production
they are other machines. The driver publishes numbered board frames and records, in shared memory,
when it published each number (:func:`time.perf_counter`, the machine's monotonic clock, which
every process reads alike). A watcher that receives a frame numbered ``v`` has seen every change
up to ``v`` for the first time, so each of those counts one delivery lag: publication to the
arrival of the frame that first showed it. A change coalesced into a later frame therefore counts
with the time it waited, not only the newest one.

What a process measures besides the lags, to tell whether the fleet itself was the bottleneck:
how late its event loop ran a 10 ms timer (``loop_delay``: time frames sat unread), and the
frames it received. Its CPU time is read by the driver from /proc.

The server under test is named by a :class:`Target`: our broadcaster and the bare baseline send
the board on connect; Centrifugo wants a connect and a subscribe command first (JSON protocol,
``hello``) and pings with ``{}``, which is answered with ``{}``.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any, Final, Protocol

import uvloop

from bench.loadgen import WsClosed, WsHandshakeError, WsWatcher

BIN_MS: Final = 0.1  # histogram resolution
BINS: Final = 50_000  # up to 5 s; the last bin collects everything slower
WAVE: Final = 100  # connections opened at once: the servers' listen backlogs are small
_VERSION: Final = b'"version":'
_PING: Final = b"{}"  # Centrifugo's JSON-protocol ping; the pong is the same


class Queue(Protocol):
    """The part of a multiprocessing queue the fleet uses (put in a process, get in the driver)."""

    def put(self, obj: Any, block: bool = True, timeout: float | None = None) -> None: ...

    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...


@dataclass(frozen=True, slots=True)
class Target:
    """How the fleet watches one server."""

    name: str
    port: int
    path: str
    hello: bytes | None = None  # sent right after the upgrade (Centrifugo: connect + subscribe)
    ready: bytes = b'"top"'  # a message containing this means the connection is watching


@dataclass(frozen=True, slots=True)
class Window:
    """What the driver shares with every fleet process for one trial."""

    base: int  # frames numbered up to ``base`` were there before the measurement
    sent_at: ctypes.Array[ctypes.c_double]  # [v - base]: when frame v was published
    final: Synchronized[int]  # the last number published (0 while publishing)
    measuring: Event  # set when the first frame is about to go out
    go: Event  # warm-up done, RSS noted: connect the rest
    leave: Event  # the driver read the CPU counters: close and exit


# -- pure helpers (unit-tested) ----------------------------------------------------------------


def frame_number(payload: bytes) -> int | None:
    """The highest ``"version":N`` in a message (several when a server batches publications)."""
    at = payload.rfind(_VERSION)
    if at < 0:
        return None
    start = end = at + len(_VERSION)
    while end < len(payload) and 48 <= payload[end] <= 57:
        end += 1
    return int(payload[start:end]) if end > start else None


def is_ping(payload: bytes) -> bool:
    """A Centrifugo ping: ``{}`` alone, or as one line of a batched message."""
    return payload == _PING or (_PING in payload and _PING in payload.split(b"\n"))


def percentile(hist: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a sparse histogram of ``BIN_MS`` bins, in ms (None if empty)."""
    total = sum(hist.values())
    if not total:
        return None
    rank, seen = q * total, 0
    for at in sorted(hist):
        seen += hist[at]
        if seen >= rank:
            return round(at * BIN_MS, 1)
    return round(max(hist) * BIN_MS, 1)


def merge(hists: Iterable[Mapping[int, int]]) -> dict[int, int]:
    """The sum of sparse histograms."""
    total: dict[int, int] = {}
    for hist in hists:
        for at, n in hist.items():
            total[at] = total.get(at, 0) + n
    return total


def shares(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` nearly equal whole shares (the first ones larger)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


# -- one process ---------------------------------------------------------------------------------


class _Watch:
    """One connection's callback: what it saw last, and the lags of what it sees first."""

    __slots__ = ("_hist", "_target", "_window", "frames", "last", "ready", "watcher")

    def __init__(self, target: Target, window: Window, hist: list[int]) -> None:
        self._target = target
        self._window = window
        self._hist = hist
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.watcher: WsWatcher | None = None
        self.last = -1
        self.frames = 0  # publications received in the window (a batched message counts each)

    def __call__(self, arrived: float, payload: bytes) -> None:
        version = frame_number(payload)
        if version is None:
            if is_ping(payload) and self.watcher is not None:
                self.watcher.send_text(_PING)
            elif self._target.ready in payload and not self.ready.done():
                self.ready.set_result(None)
            return
        if not self.ready.done():
            self.ready.set_result(None)
        base = self._window.base
        if version <= self.last or version <= base:
            return
        self.frames += payload.count(_VERSION)
        sent_at, hist = self._window.sent_at, self._hist
        for v in range(max(self.last, base) + 1, version + 1):
            published = sent_at[v - base]
            if published:
                hist[min(int((arrived - published) / BIN_MS * 1000), BINS)] += 1
        self.last = version


async def _open(target: Target, window: Window, hist: list[int], count: int) -> list[_Watch]:
    """``count`` watching connections, ``WAVE`` at a time; those that failed are left out."""
    watches: list[_Watch] = []

    async def one() -> _Watch:
        watch = _Watch(target, window, hist)
        watcher = await WsWatcher.connect("127.0.0.1", target.port, target.path, watch)
        watch.watcher = watcher
        if target.hello is not None:
            watcher.send_text(target.hello)
        await asyncio.wait_for(watch.ready, 30)
        return watch

    for start in range(0, count, WAVE):
        outcome = await asyncio.gather(
            *(one() for _ in range(min(WAVE, count - start))), return_exceptions=True
        )
        for o in outcome:
            if isinstance(o, _Watch):
                watches.append(o)
            elif not isinstance(o, (OSError, TimeoutError, WsHandshakeError, WsClosed)):
                raise o
    return watches


async def _loop_delay(hist: dict[int, int], stop: asyncio.Event) -> None:
    """How late this process's loop runs a 10 ms timer, while ``stop`` is not set."""
    while not stop.is_set():
        start = time.perf_counter()
        await asyncio.sleep(0.01)
        late = time.perf_counter() - start - 0.01
        at = min(max(0, int(late / BIN_MS * 1000)), BINS)
        hist[at] = hist.get(at, 0) + 1


async def _wait(event: Event, deadline_s: float) -> bool:
    """Wait for a multiprocessing event without blocking the loop."""
    end = time.monotonic() + deadline_s
    while not event.is_set():
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.005)
    return True


async def _run(target: Target, count: int, warm: int, window: Window, out: Queue) -> None:
    hist = [0] * (BINS + 1)
    started = time.monotonic()
    watches = await _open(target, window, hist, warm)
    out.put({"kind": "warm", "pid": os.getpid(), "connected": len(watches)})
    await _wait(window.go, 600)
    watches += await _open(target, window, hist, count - warm)
    out.put(
        {
            "kind": "ready",
            "connected": len(watches),
            "failed": count - len(watches),
            "seconds": round(time.monotonic() - started, 1),
        }
    )

    delays: dict[int, int] = {}
    stop = asyncio.Event()
    await _wait(window.measuring, 600)
    probe = asyncio.create_task(_loop_delay(delays, stop))
    deadline: float | None = None
    while True:  # until every watcher saw the last frame, or 5 s after it was published
        final = window.final.value
        if final:
            deadline = deadline or time.monotonic() + 5
            if all(w.last >= final for w in watches) or time.monotonic() > deadline:
                break
        await asyncio.sleep(0.02)
    stop.set()
    await probe
    final = window.final.value
    closed = sum(1 for w in watches if w.watcher is not None and w.watcher.closed.done())
    out.put(
        {
            "kind": "done",
            "lags": {i: n for i, n in enumerate(hist) if n},
            "loop_delay": delays,
            "frames": sum(w.frames for w in watches),
            "reached": sum(w.last >= final for w in watches),
            "closed_by_server": closed,
        }
    )
    await _wait(window.leave, 120)
    for w in watches:
        if w.watcher is not None:
            w.watcher.abort()
    await asyncio.sleep(0.1)


def fleet_process(
    target: Target, count: int, warm: int, window: Window, out: Queue, nice: int
) -> None:
    """One client process: ``warm`` connections, then (on ``go``) the rest; measure; report."""
    os.nice(nice)
    uvloop.run(_run(target, count, warm, window, out))
