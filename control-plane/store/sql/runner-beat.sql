-- A runner's Beat: its session is alive; its machine stats, when it sent any, and its
-- slots as they say (a runner that derives its slots derives them again once it hears the
-- cluster's memory per task). Returns an operator's drain request, if one is pending.
--
-- Parameters:
--   $1 runner         text
--   $2 now            timestamptz
--   $3 stats          jsonb text, or null to keep the last
UPDATE runners SET last_beat_at = $2, stats = coalesce($3::jsonb, stats),
  slots = coalesce(nullif(($3::jsonb ->> 'totalSlots')::int, 0), slots)
WHERE id = $1
RETURNING drain_requested_at, drain_mode, drain_timeout_s
