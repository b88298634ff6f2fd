-- Inserts tasks as `queued`, all or none, counting no quota: for tasks the system queues
-- on its own (a failed task's retry, a schedule's firing the caller admitted). One array
-- per column, so the text never varies with the number of tasks.
--
-- Parameters:
--   $1..$23 the tasks one array per column, in the order of taskValues (store/tasks.ts)
INSERT INTO tasks (id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout,
  delay, payload, label, schedule_id, scheduled_for, original_task_id, retry_count, retries_left, retries_delay,
  created_at, updated_at, eligible_at, hooks)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::integer[], $7::text[],
  $8::smallint[], $9::text[], $10::integer[], $11::integer[], $12::text[], $13::text[], $14::text[],
  $15::timestamptz[], $16::text[], $17::integer[], $18::integer[], $19::integer[], $20::timestamptz[],
  $21::timestamptz[], $22::timestamptz[], $23::jsonb[])
