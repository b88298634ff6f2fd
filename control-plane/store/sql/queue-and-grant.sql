-- Queues one task and, in the same statement, grants it to a runner when nothing stands
-- before it: it is eligible now ($28), its package is not paused, neither its package nor
-- its project has a concurrency limit, and no eligible task of its cluster is waiting. Then
-- a new task reaches an idle runner with one commit instead of two. Otherwise the task is
-- only queued and its lease_id comes back null. No row back when the quota's counter share
-- is full (the caller then takes the slow path).
--
-- The quota: 1 tasks are added to a counter of the owner of project $2, only while it
-- stays within that counter's share of their limit (QuotasStore, store/quotas.ts): the
-- limit is split into 16 shares (QUEUED_SHARDS), one counter row each, the connection's
-- (its backend pid modulo 16), so statements running at once mostly lock different rows.
-- The tasks are inserted only if `reserved` has a row: both happen or neither.
--
-- Parameters:
--   $1..$22 the task   in the order of taskValues (store/tasks.ts) but its last, hooks ($2 project, $3 code, $9 cluster)
--   $23 lease id      text: used when granted
--   $24 runner        text
--   $25 epoch         int: the runner's session epoch
--   $26 expires       timestamptz: the accept deadline
--   $27 now           timestamptz
--   $28 not delayed   boolean
--   $29 default limit int: the default queued-tasks quota
--   $30 hooks         jsonb: the task's (taskValues' last value)
WITH
  quota_limit AS (
    SELECT pr.user_id, coalesce(l.queued_tasks, $29::int) AS max
    FROM projects pr LEFT JOIN user_quotas l ON l.user_id = pr.user_id WHERE pr.id = $2
  ),
  reserved AS (
    INSERT INTO user_queued AS u (user_id, shard, queued)
    SELECT user_id, (pg_backend_pid() % 16), 1::bigint FROM quota_limit
    WHERE 1::bigint <= (max / 16 + CASE WHEN (pg_backend_pid() % 16) < max % 16 THEN 1 ELSE 0 END)
    ON CONFLICT (user_id, shard) DO UPDATE SET queued = u.queued + excluded.queued
      WHERE u.queued + excluded.queued <= (SELECT (max / 16 + CASE WHEN (pg_backend_pid() % 16) < max % 16 THEN 1 ELSE 0 END) FROM quota_limit)
    RETURNING 1
  ),
  g AS (
    SELECT (NOT c.paused AND r.max_concurrency IS NULL AND p.max_running IS NULL AND $28::boolean
      AND NOT EXISTS (SELECT 1 FROM tasks q WHERE q.status = 'queued' AND q.lease_id IS NULL AND q.cluster = $9
                        AND q.eligible_at <= $27)) AS ok
    FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id JOIN projects p ON p.id = $2
    WHERE c.id = $3
  ),
  upd AS (
    INSERT INTO tasks (id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout,
      delay, payload, label, schedule_id, scheduled_for, original_task_id, retry_count, retries_left, retries_delay,
      created_at, updated_at, eligible_at, lease_id, runner_id, attempt, hooks)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
      CASE WHEN g.ok THEN $23 END, CASE WHEN g.ok THEN $24 END, CASE WHEN g.ok THEN 1 ELSE 0 END, $30::jsonb
    FROM (SELECT coalesce((SELECT ok FROM g), false) AS ok) g
    WHERE EXISTS (SELECT 1 FROM reserved)
    RETURNING id, project_id, code_id, code_name, code_rev, code_revision_id, payload, timeout, priority, cluster,
      schedule_id, attempt, lease_id
  ),
  ins AS (
    INSERT INTO task_leases (id, task_id, attempt, runner_id, session_epoch, code_id, cluster, granted_at, expires_at, state)
    SELECT lease_id, id, attempt, $24, $25, code_id, cluster, $27, $26, 'offered' FROM upd WHERE lease_id IS NOT NULL
    RETURNING id
  )
SELECT upd.lease_id, upd.attempt, upd.id AS task_id, upd.project_id, upd.code_id, upd.code_name, upd.code_rev,
  upd.code_revision_id, r.image, r.command, r.env_vars, r.config, r.checksum, r.log_streams, upd.payload, upd.timeout,
  upd.priority, upd.cluster, upd.schedule_id, $26::timestamptz AS expires_at
FROM upd JOIN code_revisions r ON r.id = upd.code_revision_id
