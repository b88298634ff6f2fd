-- Queues a batch of tasks of one project, all or none, within its owner's queued-tasks
-- quota; no rows back when the quota's counter share is full (the caller then takes the
-- slow path, TasksStore.queueCounted). One array per column: the text never varies with
-- the batch's size, so it is planned once per connection (planning a VALUES list of 1,000
-- rows was most of the statement's time).
--
-- The quota: $2 tasks are added to a counter of the owner of project $1, only while it
-- stays within that counter's share of their limit (QuotasStore, store/quotas.ts): the
-- limit is split into 16 shares (QUEUED_SHARDS), one counter row each, the connection's
-- (its backend pid modulo 16), so statements running at once mostly lock different rows.
-- The tasks are inserted only if `reserved` has a row: both happen or neither.
--
-- Parameters:
--   $1 project        text
--   $2 count          int: the batch's size
--   $3 default limit  int: the default queued-tasks quota
--   $4..$26 the tasks one array per column, in the order of taskValues (store/tasks.ts)
WITH
  quota_limit AS (
    SELECT pr.user_id, coalesce(l.queued_tasks, $3::int) AS max
    FROM projects pr LEFT JOIN user_quotas l ON l.user_id = pr.user_id WHERE pr.id = $1
  ),
  reserved AS (
    INSERT INTO user_queued AS u (user_id, shard, queued)
    SELECT user_id, (pg_backend_pid() % 16), $2::bigint FROM quota_limit
    WHERE $2::bigint <= (max / 16 + CASE WHEN (pg_backend_pid() % 16) < max % 16 THEN 1 ELSE 0 END)
    ON CONFLICT (user_id, shard) DO UPDATE SET queued = u.queued + excluded.queued
      WHERE u.queued + excluded.queued <= (SELECT (max / 16 + CASE WHEN (pg_backend_pid() % 16) < max % 16 THEN 1 ELSE 0 END) FROM quota_limit)
    RETURNING 1
  )
INSERT INTO tasks (id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout,
  delay, payload, label, schedule_id, scheduled_for, original_task_id, retry_count, retries_left, retries_delay,
  created_at, updated_at, eligible_at, hooks)
SELECT * FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::integer[], $10::text[],
  $11::smallint[], $12::text[], $13::integer[], $14::integer[], $15::text[], $16::text[], $17::text[],
  $18::timestamptz[], $19::text[], $20::integer[], $21::integer[], $22::integer[], $23::timestamptz[],
  $24::timestamptz[], $25::timestamptz[], $26::jsonb[]) v
WHERE EXISTS (SELECT 1 FROM reserved)
RETURNING id
