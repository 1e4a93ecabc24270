"""Frame pacing (broadcaster.pacing), as pure logic: the promise and what it no longer costs."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from broadcaster.pacing import Pacing

TEN = Pacing(10.0)


def _send_all(pacing: Pacing, changes: list[float]) -> list[tuple[float, float]]:
    """Each change is sent at the first moment the pacing allows it, once the one before went
    (a sender that coalesces: a change waiting behind another goes with it). Returns
    (change time, send time) of each change."""
    pace = pacing.pace()
    sent: list[tuple[float, float]] = []
    last_send = -1.0
    for at in changes:
        if at <= last_send:  # it rides on the frame already going
            sent.append((at, last_send))
            continue
        when = max(at, pace.next_at)
        pacing.sent(pace, when)
        last_send = when
        sent.append((at, when))
    return sent


def _frames(sent: list[tuple[float, float]]) -> list[float]:
    return sorted({when for _, when in sent})


@given(st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=300))
def test_never_more_than_the_rate_in_any_second(times: list[float]) -> None:
    frames = _frames(_send_all(TEN, sorted(times)))
    for i in range(len(frames) - 10):
        assert frames[i + 10] - frames[i] >= 1.0 - 1e-9


@given(st.lists(st.floats(min_value=0.0, max_value=30.0), min_size=1, max_size=300))
def test_never_two_frames_within_half_an_interval(times: list[float]) -> None:
    frames = _frames(_send_all(TEN, sorted(times)))
    assert all(b - a >= 0.05 - 1e-9 for a, b in itertools.pairwise(frames))


def test_a_change_after_a_quiet_spell_goes_at_once() -> None:
    pace = TEN.pace()
    assert TEN.due(pace, 5.0)
    TEN.sent(pace, 5.0)
    assert TEN.due(pace, 5.0 + TEN.interval)
    assert not TEN.due(pace, 5.01)


@given(st.lists(st.floats(min_value=0.0, max_value=0.05), min_size=20, max_size=200))
def test_changes_at_the_rate_wait_no_longer_than_their_jitter(jitter: list[float]) -> None:
    # Changes every 100 ms, each up to 50 ms late: none waits longer than the lateness (the
    # cap may hold one back to a second after the frame ten before it, which came late).
    changes = [0.1 * i + j for i, j in enumerate(jitter)]
    for at, when in _send_all(TEN, changes):
        assert when - at <= 0.05 + 1e-9, (at, when)


def test_one_late_change_does_not_delay_the_ones_after_it() -> None:
    # The phase lock a strict 100 ms spacing had: the 5th of changes every 100 ms is 20 ms late,
    # and each of the next twenty waited for the one before (by 19, 18, ... 1 ms).
    changes = [0.1 * i + (0.02 if i == 5 else 0.0) for i in range(40)]
    delays = [when - at for at, when in _send_all(TEN, changes)]
    # Only every tenth after the late one waits, by the 20 ms (eleven frames must span a second).
    assert [i for i, d in enumerate(delays) if d > 1e-9] == [15, 25, 35]
    assert all(abs(delays[i] - 0.02) < 1e-9 for i in (15, 25, 35))


def test_a_busy_stream_is_coalesced_to_the_rate() -> None:
    changes = [0.001 * i for i in range(5000)]  # 1,000 changes a second for 5 s
    frames = _frames(_send_all(TEN, changes))
    assert 49 <= len(frames) <= 51
    assert max(when - at for at, when in _send_all(TEN, changes)) <= 0.1 + 1e-9
    gaps = [b - a for a, b in itertools.pairwise(frames)]
    assert all(abs(g - 0.1) < 1e-6 for g in gaps)  # evenly spaced under a steady load


def test_a_rate_that_is_not_whole_caps_ceil_frames_per_as_many_intervals() -> None:
    pacing = Pacing(2.5)
    frames = _frames(_send_all(pacing, [0.01 * i for i in range(2000)]))
    assert all(frames[i + 3] - frames[i] >= 1.2 - 1e-9 for i in range(len(frames) - 3))
    assert 49 <= len(frames) <= 51  # 2.5 a second over 20 s
