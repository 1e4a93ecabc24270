-- Leaderboards defined by operators (common/boards.py reads and validates them; `score boards
-- load FILE` writes them). Never deleted: a retired board stops counting, its periods stay.
CREATE SEQUENCE boards_revision_seq;
CREATE TABLE boards (
    board_id            text PRIMARY KEY,
    title               text NOT NULL,
    action_types        text[],                  -- NULL: every action type feeds the board
    windows             text[] NOT NULL,         -- all-time, daily, weekly, monthly, season
    time_zone           text NOT NULL DEFAULT 'UTC',
    seasons             jsonb NOT NULL DEFAULT '[]',  -- [{id, starts_at, ends_at}]
    redis_past_periods  integer NOT NULL DEFAULT 2,
    closed_top_n        integer NOT NULL DEFAULT 100,
    retired             boolean NOT NULL DEFAULT false,
    revision            bigint NOT NULL DEFAULT nextval('boards_revision_seq'),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);

-- The default board: its all-time window is the scores table (what /api/scoreboard/* serves);
-- its other windows are rows of board_scores like every other board's.
INSERT INTO boards (board_id, title, windows)
VALUES ('global', 'Global', '{all-time,daily,weekly,monthly}');

-- Per (board, window, period, player) totals, written by the score service in the transaction
-- that applies the actions (score/store.py). version is the player's own version (scores.version)
-- after the last action counted here, so an entry's versions only grow, as on the main board.
CREATE TABLE board_scores (
    board_id    text NOT NULL REFERENCES boards,
    window_id   text NOT NULL,
    period      text NOT NULL,
    user_id     uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    score       bigint NOT NULL CHECK (score >= 0),
    entries     integer NOT NULL CHECK (entries >= 0),  -- actions counted in the period
    version     bigint NOT NULL,
    reached_at  timestamptz NOT NULL,
    PRIMARY KEY (board_id, window_id, period, user_id)
);
-- A period's order: as scores_rank_idx.
CREATE INDEX board_scores_rank_idx
    ON board_scores (board_id, window_id, period, score DESC, reached_at ASC, user_id ASC);
CREATE INDEX board_scores_user_idx ON board_scores (user_id);

-- Every board period in one place, the default board's all-time window included: what the new
-- read routes and the Redis rebuild read (board_id/window_id/period given, so the planner keeps
-- only the matching branch).
CREATE VIEW board_entries AS
    SELECT 'global'::text AS board_id, 'all-time'::text AS window_id, 'all'::text AS period,
           user_id, score, version::integer AS entries, version, reached_at
    FROM scores WHERE version > 0
    UNION ALL
    SELECT board_id, window_id, period, user_id, score, entries, version, reached_at
    FROM board_scores;
