-- Anomaly flags (raised by the score service, score/flags.py; reviewed with auth's admin commands).
-- A flag records why a player looked like an outlier: their earning rate (exponentially weighted
-- points per second), its robust z-score, and the population's median and MAD at that moment.
-- At most one open flag per player: a replica replaying the same minutes after a rebalance, or
-- two replicas during one, cannot raise a second while the first waits for review.
CREATE TABLE player_flags (
    flag_id         uuid PRIMARY KEY,
    user_id         uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    status          text NOT NULL DEFAULT 'open'
                    CHECK (status IN ('open', 'cleared', 'confirmed')),
    reason          text NOT NULL,
    rate            double precision NOT NULL,   -- points per second
    z               double precision NOT NULL,
    median          double precision NOT NULL,   -- the population's, points per second
    mad             double precision NOT NULL,   -- median absolute deviation, points per second
    active_players  integer NOT NULL,
    tau_s           double precision NOT NULL,   -- the rate's time constant, seconds
    flagged_at      timestamptz NOT NULL,
    published_at    timestamptz,                 -- on scoreboard.player-flagged.v1; NULL = not yet
    reviewed_at     timestamptz,
    reviewed_by     text
);
CREATE UNIQUE INDEX player_flags_open_key ON player_flags (user_id) WHERE status = 'open';
CREATE INDEX player_flags_unpublished_idx ON player_flags (flagged_at) WHERE published_at IS NULL;
CREATE INDEX player_flags_flagged_at_idx ON player_flags (flagged_at);
