"""Frames are written by hand (one serialisation for everyone): they must be valid RFC 6455."""

from __future__ import annotations

import json

import pytest

from broadcaster.frames import me_frame, text_frame, top_frame
from broadcaster.standings import Entry
from broadcaster.ws import InboundBudget
from testkit.broadcaster import parse_frames


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 200_000])
def test_text_frames_of_every_length_class_parse_back(size: int) -> None:
    payload = b"x" * size
    assert parse_frames(text_frame(payload) * 2) == [(0x1, payload), (0x1, payload)]


def test_top_and_me_frames_carry_the_contract_shapes() -> None:
    entry = Entry(1, "7d3c1e4e-3f0e-4bb7-9d5a-0c8e2a1b9f10", "ada", 50)
    [(_, top)] = parse_frames(top_frame(7, [entry]))
    assert json.loads(top) == {
        "type": "top",
        "version": 7,
        "entries": [{"rank": 1, "user_id": entry.user_id, "username": "ada", "score": 50}],
    }
    [(_, me)] = parse_frames(me_frame(7, 0, None))
    assert json.loads(me) == {"type": "me", "version": 7, "score": 0, "rank": None}


def test_inbound_budget_allows_a_burst_then_the_rate() -> None:
    budget = InboundBudget(rate=2.0, burst=3.0, tokens=3.0, updated=0.0)
    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(0.5)  # one token back after half a second at 2/s
    assert not budget.take(0.5)
