-- A runner's Beat: its session is alive; its machine stats, when it sent any.
--
-- Parameters:
--   $1 runner         text
--   $2 now            timestamptz
--   $3 stats          jsonb text, or null to keep the last
UPDATE runners SET last_beat_at = $2, stats = coalesce($3::jsonb, stats) WHERE id = $1
