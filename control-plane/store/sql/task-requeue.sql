-- Puts a task whose lease was taken away (runner lost, handed back, a runner error) back in
-- the queue, counting the runner losses.
--
-- Parameters:
--   $1 task           text
--   $2 losses         int: its runner losses from now on
--   $3 message        text
--   $4 now            timestamptz
UPDATE tasks SET status = 'queued', lease_id = NULL, runner_id = NULL, runner_losses = $2, start_time = NULL,
  msg = $3, updated_at = $4 WHERE id = $1
