-- A released lease's task goes back to the queue; no retry is spent. One whose cancel was
-- requested while it was offered ends `cancelled` instead.
--
-- Parameters:
--   $1 task           text
--   $2 lease          text
--   $3 now            timestamptz
UPDATE tasks SET lease_id = NULL, runner_id = NULL, updated_at = $3,
  status = CASE WHEN cancel_requested_at IS NULL THEN status ELSE 'cancelled' END,
  msg = CASE WHEN cancel_requested_at IS NULL THEN msg ELSE 'Cancelled by user' END,
  end_time = CASE WHEN cancel_requested_at IS NULL THEN end_time ELSE $3 END
WHERE id = $1 AND lease_id = $2 AND status = 'queued'
