-- Shadow quarantine (optional per deployment: the score service's flags_quarantine setting).
-- A flag raised with quarantine on records the player's score at that moment (held_score); while
-- the flag is open or confirmed, the public board shows the player at most that score, while the
-- scores row keeps the real one (the player's own standing shows it). Clearing the flag releases
-- the points onto the board. A flag with held_score NULL holds nothing (quarantine was off).
ALTER TABLE player_flags ADD COLUMN held_score bigint CHECK (held_score >= 0);

-- What the board holds per player: the lowest held score of their open or confirmed flags.
CREATE VIEW board_holds AS
SELECT user_id, min(held_score) AS held_score
FROM player_flags
WHERE status IN ('open', 'confirmed') AND held_score IS NOT NULL
GROUP BY user_id;

-- Every hold and every release changes the public board, so each adds one to the board version
-- (broadcaster/holds.py). Counted here, by whoever changes a flag, so a board rebuilt from
-- PostgreSQL lands on a version at least as high as the live one (the count never goes down,
-- not even when a held player is deleted and their flags with them).
CREATE TABLE board_hold_steps (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    steps     bigint NOT NULL
);
INSERT INTO board_hold_steps VALUES (true, 0);
