"""The anomaly model: who earns far faster than the players active beside them.

Pure logic (no I/O, time passed in), so it can be tested exhaustively; ``score/flags.py`` feeds it
ScoreChanged events and acts on what it reports.

Each player's earning rate is an exponentially weighted rate of points per second with time
constant ``tau_s``: every change adds ``delta / tau_s`` and the rate decays by ``exp(-dt / tau_s)``
between changes. For a steady stream it converges to the true points per second (within a
``tau_s`` or two); a one-off bonus of ``p`` points lifts it by ``p / tau_s`` and fades. It needs
two numbers per player and no window of events.

At each evaluation the population is every player with a change in the last
``active_window_s``. Its median rate and MAD (median absolute deviation) are robust: up to half
the players may be outliers without moving them much, unlike a mean and standard deviation,
which one farmer drags up until they hide him. A player's robust z-score is

    z = (rate - median) / (1.4826 * max(MAD, mad_floor))

(1.4826 * MAD estimates the standard deviation of normally distributed rates). A player is an
outlier when ``z > z_threshold`` *and* ``rate > rate_floor`` for ``sustain`` evaluations in a
row. The floors are why a quiet population flags nobody: with everyone idle the MAD is 0 and any
activity would be infinitely far out, so the MAD has a floor; and a player alone at an honest
pace is far from an idle median, so the rate must also exceed an absolute floor set above what the
earning rules let an honest player reach. The z-score is why a busy population flags nobody
either: when everyone earns faster (a new catalog, an event weekend, a backlog applied at once
after an outage) the median and MAD rise with them. ``sustain`` makes a single lucky evaluation
not enough.

One report per episode: an outlier is reported when its run of outlying evaluations reaches
``sustain``, and again only after it has stopped being one.
"""

from __future__ import annotations

import math
import statistics
import uuid
from dataclasses import dataclass, field

# 1.4826 * MAD is a consistent estimator of the standard deviation for normal data.
MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class ModelParams:
    """The model's knobs (``flags_*`` settings); rates in points per second."""

    tau_s: float = 5.0
    z_threshold: float = 5.0
    sustain: int = 2
    mad_floor: float = 2.0
    rate_floor: float = 50.0
    active_window_s: float = 30.0
    min_active: int = 5

    def __post_init__(self) -> None:
        if self.tau_s <= 0 or self.active_window_s <= 0:
            raise ValueError("tau_s and active_window_s must be positive")
        if self.mad_floor <= 0:
            raise ValueError("mad_floor must be positive (a quiet population would flag everyone)")
        if self.sustain < 1 or self.min_active < 1:
            raise ValueError("sustain and min_active must be at least 1")


@dataclass(frozen=True)
class Outlier:
    """A player reported by one evaluation, with the figures that made them one."""

    user_id: uuid.UUID
    username: str
    rate: float
    z: float
    median: float
    mad: float
    active_players: int
    at: float


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation saw: the population and the outliers reported now."""

    at: float
    active_players: int
    median: float
    mad: float
    outliers: list[Outlier]


@dataclass(slots=True)
class _Player:
    username: str
    rate: float = 0.0  # points per second, as of last_t
    last_t: float = -math.inf
    version: int = 0
    streak: int = 0


@dataclass
class RateModel:
    """Per-player exponentially weighted earning rates and the population's robust statistics."""

    params: ModelParams = field(default_factory=ModelParams)
    _players: dict[uuid.UUID, _Player] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self._players)

    def observe(
        self,
        user_id: uuid.UUID,
        username: str,
        points: int,
        at: float,
        *,
        version: int | None = None,
    ) -> None:
        """Count ``points`` earned by ``user_id`` at time ``at`` (seconds, any epoch).

        A change whose ``version`` is not newer than the last one counted is a replay and is
        ignored. A change older than the last one counted adds its points without moving time back.
        """
        player = self._players.get(user_id)
        if player is None:
            player = self._players[user_id] = _Player(username)
        if version is not None:
            if version <= player.version:
                return
            player.version = version
        player.username = username
        if at > player.last_t:
            player.rate = self._decayed(player, at)
            player.last_t = at
        player.rate += points / self.params.tau_s

    def rate(self, user_id: uuid.UUID, at: float) -> float:
        """``user_id``'s earning rate at ``at``, points per second (0 for someone unseen)."""
        player = self._players.get(user_id)
        return 0.0 if player is None else self._decayed(player, at)

    def evaluate(self, at: float) -> Evaluation:
        """Compare every active player with the population at time ``at``; report new outliers.

        Players without a change in the last ``active_window_s`` are forgotten first (their
        rate has decayed to almost nothing); the rest are the population.
        """
        p = self.params
        horizon = at - p.active_window_s
        for user_id in [u for u, pl in self._players.items() if pl.last_t < horizon]:
            del self._players[user_id]
        rates = {u: self._decayed(pl, at) for u, pl in self._players.items()}
        if not rates:
            return Evaluation(at, 0, 0.0, 0.0, [])
        values = list(rates.values())
        median = statistics.median(values)
        mad = statistics.median([abs(r - median) for r in values])
        sigma = MAD_TO_SIGMA * max(mad, p.mad_floor)
        comparable = len(values) >= p.min_active
        outliers = []
        for user_id, rate in rates.items():
            player = self._players[user_id]
            z = (rate - median) / sigma
            if comparable and z > p.z_threshold and rate > p.rate_floor:
                player.streak += 1
                if player.streak == p.sustain:
                    outliers.append(
                        Outlier(user_id, player.username, rate, z, median, mad, len(values), at)
                    )
            else:
                player.streak = 0
        return Evaluation(at, len(values), median, mad, outliers)

    def _decayed(self, player: _Player, at: float) -> float:
        if player.rate == 0.0 or at <= player.last_t:
            return player.rate
        return player.rate * math.exp(-(at - player.last_t) / self.params.tau_s)
