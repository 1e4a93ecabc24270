"""The anomaly model on its own: rates, the robust z-score, the floors, sustain, one report per
episode. Simulated time; properties checked with hypothesis."""

from __future__ import annotations

import math
import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from score.anomaly import MAD_TO_SIGMA, Evaluation, ModelParams, RateModel

QUEST = 50  # points; the catalog's best type: 50 points per 2 s = 25 points/s
DT = 0.1  # simulation step, seconds


def users(n: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(n)]


class Sim:
    """Players that earn ``points`` every ``interval_s`` (with a phase), evaluated every second."""

    def __init__(self, params: ModelParams | None = None) -> None:
        self.model = RateModel(params or ModelParams())
        self.players: dict[uuid.UUID, tuple[float, int, float]] = {}
        self.t = 0.0
        self.next_eval = 1.0
        self.flagged: dict[uuid.UUID, float] = {}
        self.evaluations: list[Evaluation] = []

    def add(self, interval_s: float, points: int, start_s: float = 0.0) -> uuid.UUID:
        user = uuid.uuid4()
        self.players[user] = (interval_s, points, start_s)
        return user

    def run(self, until_s: float) -> None:
        next_at = {u: start + random.uniform(0, iv) for u, (iv, _, start) in self.players.items()}
        while self.t < until_s:
            self.t = round(self.t + DT, 6)
            for user, (interval, points, _) in self.players.items():
                while next_at[user] <= self.t:
                    self.model.observe(user, "p", points, next_at[user])
                    next_at[user] += interval
            if self.t >= self.next_eval:
                self.next_eval += 1.0
                ev = self.model.evaluate(self.t)
                self.evaluations.append(ev)
                for o in ev.outliers:
                    self.flagged.setdefault(o.user_id, self.t)


def honest_population(sim: Sim, n: int = 50) -> list[uuid.UUID]:
    """Players at honest paces: quests, puzzles and taps with think time between actions."""
    out = []
    for _ in range(n):
        kind = random.random()
        if kind < 0.5:
            out.append(sim.add(random.uniform(2.0, 6.0), QUEST))  # 8-25 points/s
        elif kind < 0.8:
            out.append(sim.add(random.uniform(1.0, 3.0), 20))  # puzzles, 7-20 points/s
        else:
            out.append(sim.add(random.uniform(0.1, 0.5), 1))  # taps, 2-10 points/s
    return out


def test_rate_converges_to_points_per_second() -> None:
    model = RateModel(ModelParams(tau_s=5.0))
    user = uuid.uuid4()
    for i in range(200):  # 50 points every 2 s for 400 s: 25 points/s
        model.observe(user, "p", QUEST, i * 2.0)
    # Sampled over one period, the rate averages the true rate.
    samples = [model.rate(user, 398.0 + k * 0.01) for k in range(200)]
    assert sum(samples) / len(samples) == pytest.approx(25.0, rel=0.02)


def test_rate_decays_with_tau() -> None:
    model = RateModel(ModelParams(tau_s=5.0))
    user = uuid.uuid4()
    model.observe(user, "p", 100, 10.0)
    assert model.rate(user, 10.0) == pytest.approx(20.0)
    assert model.rate(user, 15.0) == pytest.approx(20.0 / math.e)
    assert model.rate(uuid.uuid4(), 15.0) == 0.0


def test_replayed_versions_are_not_counted_twice() -> None:
    model = RateModel()
    user = uuid.uuid4()
    model.observe(user, "p", 50, 1.0, version=1)
    model.observe(user, "p", 50, 1.0, version=1)
    model.observe(user, "p", 50, 1.5, version=2)
    model.observe(user, "p", 50, 1.5, version=2)
    assert model.rate(user, 1.5) == pytest.approx(50 * math.exp(-0.5 / 5) / 5 + 10)


def test_z_is_robust_and_reported_with_the_population() -> None:
    model = RateModel(ModelParams(sustain=1, rate_floor=10.0))
    pop = users(9)
    fast = uuid.uuid4()
    for i, user in enumerate(pop):  # rates 10, 11, ..., 18 points/s at t = 0
        model.observe(user, "p", 5 * (10 + i), 0.0)
    model.observe(fast, "p", 5 * 200, 0.0)
    ev = model.evaluate(0.0)
    assert ev.active_players == 10
    assert ev.median == pytest.approx(14.5)
    assert ev.mad == pytest.approx(2.5)
    [o] = ev.outliers
    assert o.user_id == fast
    assert o.z == pytest.approx((200 - 14.5) / (MAD_TO_SIGMA * 2.5))


def test_fast_player_among_fifty_honest_is_flagged_within_seconds() -> None:
    random.seed(12)
    sim = Sim()
    honest = honest_population(sim)
    fast = sim.add(0.5, QUEST, start_s=20.0)  # 100 points/s, 4x the best honest rate
    sim.run(60.0)
    assert fast in sim.flagged
    assert sim.flagged[fast] - 20.0 <= 10.0
    assert not set(honest) & set(sim.flagged)


def test_honest_burst_is_not_flagged() -> None:
    """Idle, then the most the earning rules allow: daily_login, the budget's one action of
    slack at once, then quests back to back."""
    random.seed(3)
    sim = Sim()
    honest_population(sim)
    burster = uuid.uuid4()
    t = 20.0
    sim.run(t)
    sim.model.observe(burster, "p", 10, t)  # daily_login
    sim.model.observe(burster, "p", QUEST, t)  # the slack
    for k in range(1, 15):
        sim.model.observe(burster, "p", QUEST, t + 2.0 * k)
    sim.run(60.0)
    assert burster not in sim.flagged
    assert not sim.flagged


def test_quiet_population_flags_nobody() -> None:
    """Everyone idle but one player at the best honest pace: MAD is 0, yet no flag."""
    model = RateModel()
    idle = users(20)
    lone = uuid.uuid4()
    for user in idle:
        model.observe(user, "p", 1, 0.0)
    for t in range(0, 30):
        if t % 2 == 0:
            model.observe(lone, "p", QUEST, float(t))
        assert model.evaluate(float(t) + 0.5).outliers == []


def test_busy_population_flags_nobody_but_its_outlier() -> None:
    """Everyone far above the rate floor (a generous catalog): the z-score keeps them unflagged."""
    random.seed(5)
    sim = Sim()
    pop = [sim.add(random.uniform(0.4, 0.8), QUEST) for _ in range(40)]  # 60-125 points/s
    fast = sim.add(0.05, QUEST, start_s=15.0)  # 1000 points/s
    sim.run(40.0)
    assert set(sim.flagged) == {fast}
    assert not set(pop) & set(sim.flagged)


def test_too_small_a_population_is_not_compared() -> None:
    model = RateModel(ModelParams(min_active=5, sustain=1))
    a, b, c = users(3)
    model.observe(a, "p", 1, 0.0)
    model.observe(b, "p", 1, 0.0)
    model.observe(c, "p", 10_000, 0.0)
    assert model.evaluate(0.0).outliers == []


def test_sustain_and_one_report_per_episode() -> None:
    model = RateModel(ModelParams(sustain=2, rate_floor=10.0))
    pop = users(10)
    fast = uuid.uuid4()
    reports = []
    for second in range(60):
        t = float(second)
        for user in pop:
            model.observe(user, "p", 10, t)
        if second < 10 or 40 <= second < 50:  # two episodes of 1000 points/s, 30 s apart
            model.observe(fast, "p", 1000, t)
        reports.append([o.user_id for o in model.evaluate(t + 0.5).outliers])
    flagged_at = [s for s, r in enumerate(reports) if fast in r]
    assert flagged_at == [1, 41]  # the second evaluation of each episode, once each


def test_idle_players_are_forgotten() -> None:
    model = RateModel(ModelParams(active_window_s=30.0))
    user = uuid.uuid4()
    model.observe(user, "p", 5, 0.0)
    assert model.evaluate(29.0).active_players == 1
    assert model.evaluate(31.0).active_players == 0
    assert len(model) == 0


@pytest.mark.parametrize(
    "bad", [{"tau_s": 0.0}, {"mad_floor": 0.0}, {"sustain": 0}, {"min_active": 0}]
)
def test_params_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must"):
        ModelParams(**bad)  # type: ignore[arg-type]


rates = st.lists(st.floats(min_value=0.1, max_value=200.0), min_size=5, max_size=60)


@settings(max_examples=200, deadline=None)
@given(rates=rates, scale=st.floats(min_value=0.01, max_value=100.0))
def test_flags_do_not_depend_on_the_unit_of_points(rates: list[float], scale: float) -> None:
    """Scaling every rate and both floors by the same factor flags the same players."""
    base = ModelParams(sustain=1, mad_floor=2.0, rate_floor=50.0)
    scaled = ModelParams(sustain=1, mad_floor=2.0 * scale, rate_floor=50.0 * scale)
    ids = users(len(rates))

    def flagged(params: ModelParams, factor: float) -> set[uuid.UUID]:
        model = RateModel(params)
        for user, rate in zip(ids, rates, strict=True):
            model.observe(user, "p", 1, 0.0)
            model._players[user].rate = rate * factor  # a rate as if earned over time
        return {o.user_id for o in model.evaluate(0.0).outliers}

    plain, big = flagged(base, 1.0), flagged(scaled, scale)
    # Floating point may move a player sitting exactly on the threshold; nobody else changes.
    assert len(plain ^ big) <= 1


@settings(max_examples=200, deadline=None)
@given(rates=st.lists(st.floats(min_value=0.0, max_value=50.0), min_size=1, max_size=80))
def test_nobody_under_the_rate_floor_is_ever_flagged(rates: list[float]) -> None:
    """Whatever the population, a player earning no faster than the floor is never flagged."""
    model = RateModel(ModelParams(sustain=1, rate_floor=50.0, min_active=1))
    for rate in rates:
        user = uuid.uuid4()
        model.observe(user, "p", 1, 0.0)
        model._players[user].rate = rate
    assert model.evaluate(0.0).outliers == []


@settings(max_examples=100, deadline=None)
@given(
    rates=st.lists(st.floats(min_value=0.0, max_value=25.0), min_size=5, max_size=80),
    factor=st.floats(min_value=6.0, max_value=50.0),
)
def test_far_above_every_honest_rate_is_flagged(rates: list[float], factor: float) -> None:
    """One player at 6x or more the catalog's best honest rate is an outlier among any honest
    population of five or more, however its rates spread (the worst, half idle and half at the
    best pace, has median and MAD 12.5: the threshold is then 12.5 + 5 x 1.4826 x 12.5 = 105)."""
    model = RateModel(ModelParams(sustain=1))
    for rate in rates:
        user = uuid.uuid4()
        model.observe(user, "p", 1, 0.0)
        model._players[user].rate = rate
    fast = uuid.uuid4()
    model.observe(fast, "p", 1, 0.0)
    model._players[fast].rate = 25.0 * factor
    assert [o.user_id for o in model.evaluate(0.0).outliers] == [fast]
