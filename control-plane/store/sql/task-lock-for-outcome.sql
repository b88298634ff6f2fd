-- The task of a lease being ended, locked, with what its outcome depends on (and what the
-- run-time and queue-wait histograms are labelled by).
--
-- Parameters:
--   $1 task           text
SELECT id, lease_id, runner_losses, retries_left, cancel_requested_at, status, cluster, code_name, eligible_at FROM tasks WHERE id = $1 FOR UPDATE
