-- Ends a lease with an outcome.
--
-- Parameters:
--   $1 lease          text
--   $2 now            timestamptz
--   $3 outcome        text: the task's status, or why the lease was taken away
--   $4 exit code      int: the attempt's, or null
--   $5 msg            text: the attempt's result, or why it was ended; or null
UPDATE task_leases SET state = 'done', ended_at = $2, outcome = $3, exit_code = $4, msg = $5 WHERE id = $1
