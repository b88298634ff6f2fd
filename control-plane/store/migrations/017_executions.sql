-- Executions (Tasks API `.../executions`): every attempt of a task that reached a runner,
-- kept with its own record and its own log. An execution is a lease a runner accepted (or
-- started without an Accept): accepted_at says when. exit_code and msg are the attempt's
-- own result, apart from the task's, which only the last attempt sets.

ALTER TABLE task_leases
  ADD COLUMN accepted_at timestamptz,
  ADD COLUMN exit_code integer,
  ADD COLUMN msg text;
-- Leases from before this migration that reached a runner: when they started, or, for one
-- accepted and not started, when it was granted (the nearest time known).
UPDATE task_leases SET accepted_at = coalesce(started_at, granted_at)
  WHERE state IN ('accepted', 'running') OR started_at IS NOT NULL;

-- Each attempt's log is kept: a chunk belongs to the attempt that wrote it, at its byte
-- offset in that attempt's combined log. The task's own log is its current attempt's.
ALTER TABLE task_log_chunks ADD COLUMN attempt integer;
UPDATE task_log_chunks c SET attempt = t.attempt FROM tasks t WHERE t.id = c.task_id;
ALTER TABLE task_log_chunks ALTER COLUMN attempt SET NOT NULL;
ALTER TABLE task_log_chunks DROP CONSTRAINT task_log_chunks_pkey;
ALTER TABLE task_log_chunks ADD PRIMARY KEY (task_id, attempt, byte_offset);

-- A schedule's tasks, newest first (Schedules API `.../tasks`).
CREATE INDEX tasks_schedule_newest ON tasks (schedule_id, id DESC) WHERE schedule_id IS NOT NULL;
