-- Offered or accepted → running for leases of one runner: the container started and the
-- task becomes `running`. Returns each started lease with its grant time, and its cluster,
-- code package and when its task became eligible (the queue-wait histogram's labels and start).
--
-- Parameters:
--   $1 leases         text[]
--   $2 attempts       int[]
--   $3 containers     text[]
--   $4 started at     text[]: ISO times
--   $5 runner         text
--   $6 expires        timestamptz: now plus the lease TTL
--   $7 now            timestamptz
WITH
  v AS (SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[]) AS v(id, attempt, container_id, started_at)),
  l AS (
    UPDATE task_leases l SET state = 'running', started_at = v.started_at::timestamptz, container_id = v.container_id,
      expires_at = $6, accepted_at = coalesce(l.accepted_at, $7)
    FROM v WHERE l.id = v.id AND l.attempt = v.attempt AND l.runner_id = $5 AND l.state IN ('offered', 'accepted')
    RETURNING l.id, l.task_id, l.granted_at, l.started_at, l.cluster
  ),
  t AS (
    UPDATE tasks t SET status = 'running', start_time = l.started_at, end_time = NULL, updated_at = $7,
      run_times = t.run_times + 1
    FROM l WHERE t.id = l.task_id AND t.lease_id = l.id
    RETURNING t.id, t.code_name, t.eligible_at
  )
SELECT l.id, l.granted_at, l.cluster, t.code_name, t.eligible_at FROM l LEFT JOIN t ON t.id = l.task_id
