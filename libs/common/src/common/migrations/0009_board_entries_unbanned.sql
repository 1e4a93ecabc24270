-- Banned players are off every board (common.moderation): the view every board period is read
-- and rebuilt from leaves them out, so an unban brings their entries back as they were (their
-- rows stay in board_scores; nothing is deleted).
CREATE OR REPLACE VIEW board_entries AS
    SELECT 'global'::text AS board_id, 'all-time'::text AS window_id, 'all'::text AS period,
           s.user_id, s.score, s.version::integer AS entries, s.version, s.reached_at
    FROM scores s JOIN users u USING (user_id)
    WHERE s.version > 0 AND NOT u.banned
    UNION ALL
    SELECT b.board_id, b.window_id, b.period, b.user_id, b.score, b.entries, b.version,
           b.reached_at
    FROM board_scores b JOIN users u USING (user_id)
    WHERE NOT u.banned;
