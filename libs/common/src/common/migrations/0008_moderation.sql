-- Moderation: bans, unbans and deletions as an ordered log (auth writes it in the transaction
-- that bans, unbans or deletes; common.moderation). The score service announces each entry on
-- scoreboard.user-removals.v1 through its outbox (score/moderation.py) and marks it published
-- in the same transaction; the broadcaster takes banned players off every board and puts
-- unbanned ones back (broadcaster/moderation.py), in seq order.
CREATE TABLE moderation_events (
    -- An identity column: auth's INSERT privilege is enough, no grant on a sequence.
    seq           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id       uuid NOT NULL,  -- no foreign key: a deletion's entry outlives the user
    action        text NOT NULL CHECK (action IN ('banned', 'unbanned', 'deleted')),
    at            timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX moderation_events_unpublished_idx ON moderation_events (seq)
    WHERE published_at IS NULL;
CREATE INDEX moderation_events_user_idx ON moderation_events (user_id);
