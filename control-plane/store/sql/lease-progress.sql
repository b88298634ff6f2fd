-- Progress from inside a task, relayed by its runner, on its live lease.
--
-- Parameters:
--   $1 lease          text
--   $2 attempt        int
--   $3 runner         text
--   $4 percent        int, or null to keep it
--   $5 message        text, or null to keep it
--   $6 now            timestamptz
UPDATE tasks t SET percent = coalesce($4, t.percent), msg = coalesce($5, t.msg), updated_at = $6
FROM task_leases l
WHERE l.id = $1 AND l.attempt = $2 AND l.runner_id = $3 AND l.ended_at IS NULL AND t.id = l.task_id
  AND t.lease_id = l.id
