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

:class:`Pace` is one sender's history (a connection's top frames, the ticker's broadcasts, the
rank rounds); :class:`Pacing` holds the rule and answers for a history.
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass

# Timers may fire a clock tick early; what is this close to due counts as due.
_SLACK_S = 1e-3


class Pace:
    """One sender's recent sends: its next slot and its last few send times."""

    __slots__ = ("_at", "_recent", "_slot")

    def __init__(self, burst: int) -> None:
        self._slot = -math.inf  # the next send's slot
        self._recent = array("d", [-math.inf]) * burst  # a ring, the oldest at ``_at``
        self._at = 0


@dataclass(frozen=True, slots=True)
class Pacing:
    """At most ``per_second`` sends in any second; a send up to half an interval late keeps its
    slot."""

    per_second: float

    @property
    def interval(self) -> float:
        """The average spacing, ``1 / per_second``."""
        return 1.0 / self.per_second

    @property
    def burst(self) -> int:
        """How many sends the cap counts: that many fit in ``burst`` intervals, never more."""
        return max(1, math.ceil(self.per_second - 1e-9))

    def pace(self) -> Pace:
        """A fresh history (nothing sent yet: the first send is due at once)."""
        return Pace(self.burst)

    def next_at(self, pace: Pace) -> float:
        """The earliest time the next send may go."""
        return max(pace._slot, pace._recent[pace._at] + self.burst * self.interval)

    def due(self, pace: Pace, now: float) -> bool:
        """May a send go at ``now``?"""
        return now >= self.next_at(pace) - _SLACK_S

    def sent(self, pace: Pace, now: float) -> None:
        """Record a send at ``now``."""
        on_time = now - pace._slot <= self.interval / 2
        pace._slot = (pace._slot if on_time else now) + self.interval
        pace._recent[pace._at] = now
        pace._at = (pace._at + 1) % len(pace._recent)
