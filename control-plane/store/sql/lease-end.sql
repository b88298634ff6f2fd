-- Ends a lease with an outcome.
--
-- Parameters:
--   $1 lease          text
--   $2 now            timestamptz
--   $3 outcome        text: the task's status, or why the lease was taken away
UPDATE task_leases SET state = 'done', ended_at = $2, outcome = $3 WHERE id = $1
