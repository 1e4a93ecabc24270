-- Users deleted by an operator (auth's delete-user), recorded in the deleting transaction.
-- The board leaves them at once (the broadcaster LISTENs on "board_removals"), and this table
-- keeps the board version monotonic: that version is the sum of every user's versions, so a
-- rebuild adds, for each removed user, the version they had plus one (the removal itself is a
-- change of the board). Without it, a rebuild after a deletion would go back in version.
CREATE TABLE removed_users (
    user_id     uuid PRIMARY KEY,
    version     bigint NOT NULL,
    removed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX removed_users_at_idx ON removed_users (removed_at);
