-- Closing board periods (score/closer.py): a closed period's final standings go out on
-- scoreboard.period-closed.v1 through the transactional outbox, like ScoreChanged.

-- Which stream an outbox row is published to (score/outbox.py maps it to the deployment's
-- topic): every row before this migration, and every row the apply writes, is a ScoreChanged.
ALTER TABLE outbox ADD COLUMN stream text NOT NULL DEFAULT 'score-changed';

-- One row per closed period, written in the transaction that puts its PeriodClosed event in
-- the outbox: the primary key is what lets exactly one closer (of any replica) close a period.
-- players is the event's count (banned players left out); entries counts every entry the
-- period held at the close, banned players' too, so that late_entries (entries applied to it
-- afterwards: commands accepted in the period but applied after its grace, which count in its
-- totals but were not in the event) does not move with bans.
CREATE TABLE closed_periods (
    board_id      text NOT NULL REFERENCES boards,
    window_id     text NOT NULL,
    period        text NOT NULL,
    starts_at     timestamptz NOT NULL,
    ends_at       timestamptz NOT NULL,
    top_n         integer NOT NULL,
    players       bigint NOT NULL,
    entries       bigint NOT NULL,
    late_entries  bigint NOT NULL DEFAULT 0,
    closed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (board_id, window_id, period)
);
CREATE INDEX closed_periods_watermark_idx ON closed_periods (board_id, window_id, ends_at);
CREATE INDEX closed_periods_recent_idx ON closed_periods (closed_at);
