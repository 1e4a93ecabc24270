"""bench/bench_boards.py, tiny: both parts run against the real servers and report what they
measured (a thousand players, a few boards in both topologies, half a second of paced commands)."""

from __future__ import annotations

import pytest

from bench.bench_boards import APPLY_WINDOWS, parse_args, run
from testkit.env import Infra

TINY = [
    *("--players", "1000", "--requests", "20", "--concurrency", "4"),
    *("--boards", "3", "--apply-users", "50", "--apply-commands", "100", "--repeats", "1"),
    *("--rate", "40", "--seconds", "0.5", "--sustainable-rate", "20"),
    *("--drain-timeout", "30", "--overload-drain", "30"),
]


@pytest.mark.timeout(240)
async def test_a_tiny_run_measures_every_read_and_each_topology(infra: Infra) -> None:
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

    many = result["many_boards"]
    boards, commands = many["boards"], many["store"]["commands"]
    assert many["action_types"] == boards
    # The default board counts a command in its daily, weekly and monthly windows (its all-time
    # one is the scores table); an extra board in all four. In ``own``, command i is of type
    # mode_{i % boards}, and mode_000 has no board of its own.
    default = len(APPLY_WINDOWS) - 1
    with_own_board = sum(1 for i in range(commands) if i % boards)
    expected_periods = {
        "default_alone": default * commands,
        "own": default * commands + len(APPLY_WINDOWS) * with_own_board,
        "all": (default + len(APPLY_WINDOWS) * (boards - 1)) * commands,
    }
    store = many["store"]
    for name, periods in expected_periods.items():
        row = store[name]
        # The bench checked board_scores after each run against the commands' distinct
        # (board, window, period, player) keys and their periods: these are its findings.
        assert row["board_scores_entries"] == periods, (name, row)
        assert row["board_periods_per_command"] == round(periods / commands, 3), (name, row)
        # Players repeat across commands, so rows are fewer than entries, and at least one per
        # touched player and default-board period.
        assert store["users_touched"] * default <= row["board_scores_rows"] <= periods, row
        assert row["commands_per_s"] > 0
        assert row["longest_batch_s"] > 0
    for name in ("own", "all"):
        assert store[name]["ratio"] > 0
    assert store["all"]["board_scores_rows"] > store["own"]["board_scores_rows"]

    e2e = many["end_to_end"]
    phases = e2e["phases"]
    assert [p["phase"] for p in phases] == ["default_alone", "own", "all_sustainable", "all"]
    for phase in phases:
        assert phase["all_seen_within_drain"], phase
        assert phase["changed_seen"] == phase["applied_seen"] == phase["commands"] > 0, phase
        assert phase["to_score_changed_p99_ms"] is not None, phase
    assert set(e2e["applied_ratio"]) == {"own", "all"}
    assert set(result["headline"]) <= set(result["targets"])
    assert {"own_apply_ratio", "all_apply_ratio", "own_e2e_applied_ratio"} <= set(
        result["headline"]
    )
