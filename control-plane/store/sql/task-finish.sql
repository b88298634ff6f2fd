-- Sets a task's final state; a final state is never overwritten (guarded by its lease).
--
-- Parameters:
--   $1 task           text
--   $2 lease          text
--   $3 status         text: final
--   $4 message        text, or null to keep it
--   $5 exit code      int, or null
--   $6 started at     timestamptz, or null (kept when the task has one)
--   $7 ended at       timestamptz
--   $8 now            timestamptz
UPDATE tasks SET status = $3, msg = coalesce($4, msg), exit_code = $5, start_time = coalesce(start_time, $6),
  end_time = $7, lease_id = NULL, updated_at = $8,
  percent = CASE WHEN $3 = 'complete' THEN 100 ELSE percent END
WHERE id = $1 AND lease_id = $2 AND status IN ('queued', 'running')
