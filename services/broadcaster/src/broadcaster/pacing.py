"""Frame pacing: at most ``tick_hz`` frames in any one second, and none held back needlessly.

The promise to a client is "at most 10 top frames a second". Spacing frames a strict
``1 / tick_hz`` apart keeps it, but phase-locks under a steady stream of changes: of changes that
come every 100 ms, one 20 ms late makes each of the next ones wait for its spacing, and the
following twenty frames are all late. Two rules keep the promise without that:

- a schedule of slots one interval apart: a frame goes at its slot or later, never earlier. A
  frame that went late by at most half an interval keeps its slot, so the next slot is one
  interval after it and a late change does not push later ones back; after a quiet spell (or a
  frame later than that) the schedule restarts at the frame, so a change after a quiet spell
  goes out at once. Under a steady load frames go exactly one interval apart;
- a cap: the frame ``tick_hz`` sends back must have left at least a second ago, so no one-second
  window ever holds more than ``tick_hz`` frames (the schedule alone would allow one more, when a
  late frame is followed by ten on time). For a rate that is not a whole number the cap is
  ``ceil(rate)`` frames per ``ceil(rate)`` intervals.

:class:`Pace` is one sender's history (the ticker's broadcasts, a connection's top frames, the
rank rounds); :class:`Pacing` holds the rule and answers for a history.

Most connections get exactly the broadcasts, so they share the broadcasts' history instead of
keeping one each (no memory and no bookkeeping per frame for them; see
:class:`broadcaster.connections.Connections`). A history that holds every send a connection got
(and perhaps more) is a safe one to check it against: fewer sends never make a send early. A
connection that gets a frame of its own (its snapshot, a catch-up after lagging, a subscription's
frames) gets its own history, forked from the broadcasts' (:meth:`Pacing.fork`), and goes back
to the shared one once a whole cap window has passed with only broadcasts sent to it
(:meth:`Pacing.in_step`).
"""

from __future__ import annotations

import math
from array import array

# Timers may fire a clock tick early; what is this close to due counts as due.
_SLACK_S = 1e-3
# Where a Pace keeps what (one array of doubles: no float objects per connection).
_SLOT, _NEXT, _OWN, _RING = 0, 1, 2, 3


class Pace:
    """One sender's recent sends: its next slot, when it may send next, its last few sends."""

    __slots__ = ("_at", "_times")

    def __init__(self, burst: int) -> None:
        # [the next slot, the next allowed send, the last send of its own (not a broadcast),
        #  then a ring of the last ``burst`` send times]
        self._times = array("d", [-math.inf]) * (_RING + burst)
        self._at = _RING  # the ring's oldest

    @property
    def next_at(self) -> float:
        """The earliest time the next send may go."""
        return self._times[_NEXT]


class Pacing:
    """At most ``per_second`` sends in any second; a send up to half an interval late keeps its
    slot."""

    __slots__ = ("_half", "_window", "burst", "interval", "per_second")

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.interval = 1.0 / per_second  # the average spacing
        # How many sends the cap counts: that many fit in ``burst`` intervals, never more.
        self.burst = max(1, math.ceil(per_second - 1e-9))
        self._window = self.burst * self.interval
        self._half = self.interval / 2

    def __repr__(self) -> str:
        return f"Pacing({self.per_second!r})"

    def pace(self) -> Pace:
        """A fresh history (nothing sent yet: the first send is due at once)."""
        return Pace(self.burst)

    def fork(self, shared: Pace) -> Pace:
        """A history of one's own that starts as ``shared`` (which holds every send so far)."""
        own = Pace(self.burst)
        own._times[:] = shared._times
        own._at = shared._at
        return own

    def in_step(self, pace: Pace, now: float) -> bool:
        """No send of its own in the last cap window: every later send was a broadcast, so the
        shared history (which holds them all) is a safe one to check it against again."""
        return now - pace._times[_OWN] >= self._window

    def due(self, pace: Pace, now: float) -> bool:
        """May a send go at ``now``?"""
        return now >= pace._times[_NEXT] - _SLACK_S

    def sent(self, pace: Pace, now: float, *, own: bool = False) -> None:
        """Record a send at ``now`` (``own``: not one of the broadcasts)."""
        times, at = pace._times, pace._at
        if own:
            times[_OWN] = now
        slot = times[_SLOT]
        slot = (slot if now - slot <= self._half else now) + self.interval  # on time: kept
        times[_SLOT] = slot
        times[at] = now
        at = at + 1 if at + 1 < len(times) else _RING
        pace._at = at
        times[_NEXT] = max(slot, times[at] + self._window)
