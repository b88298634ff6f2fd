-- The task of a lease being ended, locked, with what its outcome depends on.
--
-- Parameters:
--   $1 task           text
SELECT id, lease_id, runner_losses, retries_left, cancel_requested_at, status FROM tasks WHERE id = $1 FOR UPDATE
