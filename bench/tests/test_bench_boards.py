"""bench/bench_boards.py, tiny: both parts run against the real servers and report what they
measured (a thousand players, a few boards, half a second of paced commands)."""

from __future__ import annotations

import pytest

from bench.bench_boards import parse_args, run
from testkit.env import Infra

TINY = [
    *("--players", "1000", "--requests", "20", "--concurrency", "4"),
    *("--boards", "3", "--apply-users", "50", "--apply-commands", "100", "--repeats", "1"),
    *("--rate", "40", "--seconds", "0.5", "--sustainable-rate", "20"),
    *("--drain-timeout", "30", "--overload-drain", "30"),
]


@pytest.mark.timeout(240)
async def test_a_tiny_run_measures_every_read_and_both_applies(infra: Infra) -> None:
    result = await run(parse_args(TINY), infra)

    big = result["big_board"]
    assert big["players"] == 1000
    assert big["rebuild_s"] > 0
    assert big["redis_memory"]["bytes_per_entry"] > 0
    kinds = {row["kind"] for row in big["reads"]}
    assert kinds == {
        "top_100", "top_1000", "deep_page_100", "around_me_rank1", "around_me_middle",
        "around_me_bottom", "rank_random_player",
    }  # fmt: skip
    for row in big["reads"]:
        assert row["statuses"] == {"200": 20}, row
        assert 0 < row["p50_ms"] <= row["p99_ms"], row

    store = result["many_boards"]["store"]
    assert store["board_periods_per_command"] == 11  # 3 + 2 boards x 4 windows
    # Every touched player has an entry in each period (more if a period rolled over meanwhile).
    assert store["board_scores_rows_after_many"] >= store["users_touched"] * 11
    assert store["single_commands_per_s"] > 0
    assert store["many_commands_per_s"] > 0

    phases = result["many_boards"]["end_to_end"]["phases"]
    assert [p["phase"] for p in phases] == ["single", "many_sustainable", "many"]
    for phase in phases:
        assert phase["all_seen_within_drain"], phase
        assert phase["changed_seen"] == phase["applied_seen"] == phase["commands"] > 0, phase
        assert phase["to_score_changed_p99_ms"] is not None, phase
    assert set(result["headline"]) <= set(result["targets"])
