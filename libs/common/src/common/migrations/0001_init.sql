-- Accounts (owned by the auth service; the score service reads usernames).
CREATE TABLE users (
    user_id        uuid PRIMARY KEY,
    username       text NOT NULL,
    password_hash  text NOT NULL,
    roles          text[] NOT NULL DEFAULT '{player}',
    banned         boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);
-- Names are unique regardless of case: "Alice" and "alice" are one player.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- A login is a session; its refresh tokens form one rotation chain.
CREATE TABLE login_sessions (
    session_id  uuid PRIMARY KEY,
    user_id     uuid NOT NULL REFERENCES users ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX login_sessions_user_idx ON login_sessions (user_id);

CREATE TABLE refresh_tokens (
    token_hash  bytea PRIMARY KEY,          -- SHA-256 of the token; the token itself is never stored
    session_id  uuid NOT NULL REFERENCES login_sessions ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);

-- Scores (owned by the score service).
CREATE TABLE scores (
    user_id     uuid PRIMARY KEY REFERENCES users ON DELETE CASCADE,
    score       bigint NOT NULL DEFAULT 0 CHECK (score >= 0),
    version     bigint NOT NULL DEFAULT 0,     -- the user's own event sequence: 1, 2, 3, ...
    reached_at  timestamptz NOT NULL,          -- when the current score was reached (tie rule)
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The board's order: higher score first, then whoever reached it first.
CREATE INDEX scores_rank_idx ON scores (score DESC, reached_at ASC, user_id ASC);

-- Every applied action, once: the primary key is the exactly-once guard.
CREATE TABLE actions (
    action_id    uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    action_type  text NOT NULL,
    points       integer NOT NULL CHECK (points > 0),
    issued_at    timestamptz NOT NULL,
    accepted_at  timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    version      bigint NOT NULL
);
CREATE INDEX actions_user_idx ON actions (user_id, version);

-- Transactional outbox: ScoreChanged rows written in the transaction that changed the score.
CREATE TABLE outbox (
    id          bigserial PRIMARY KEY,
    event_key   bytea NOT NULL,
    payload     bytea NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz
);
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
