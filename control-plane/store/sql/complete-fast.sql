-- Results of many leases of one runner that end their tasks by themselves (no retry to
-- queue), applied by one statement that ends the lease and the task together, each guarded
-- as the one-by-one path guards it. `o` is the lease as this statement's snapshot has it
-- (its state before the update: a Started folded into this result counts a run only if
-- none was recorded). The task's guards are checked on the snapshot to pick the leases and
-- again, on the locked row, by the task's update; if they disagree (a concurrent cancel or
-- reclaim), `tasks` differs from the number of rows and the caller runs the transaction again.
-- Each row also names the lease's cluster, the task's code package and when the task became
-- eligible (the run-time and queue-wait histograms' labels and start).
--
-- Parameters:
--   $1 leases         text[]
--   $2 attempts       int[]
--   $3 statuses       text[]: the task's final status per lease
--   $4 messages       text[]
--   $5 exit codes     int[]
--   $6 started at     text[]: ISO times, or null
--   $7 ended at       text[]: ISO times
--   $8 folded start   text[]: the Started folded into this result (ISO), or null
--   $9 containers     text[]: of the folded Started, or null
--   $10 runner        text
--   $11 now           timestamptz
WITH
  v AS (
    SELECT * FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[], $8::text[], $9::text[])
      AS v(lease_id, attempt, status, msg, exit_code, started_at, ended_at, folded_at, container_id)
  ),
  l AS (
    UPDATE task_leases l SET state = 'done', ended_at = $11, outcome = v.status, exit_code = v.exit_code, msg = v.msg,
      started_at = coalesce(l.started_at, v.folded_at::timestamptz), container_id = coalesce(l.container_id, v.container_id),
      accepted_at = coalesce(l.accepted_at, v.folded_at::timestamptz, $11)
    FROM v, task_leases o, tasks t
    WHERE l.id = v.lease_id AND o.id = l.id AND t.id = o.task_id
      AND l.attempt = v.attempt AND l.runner_id = $10 AND l.state <> 'done'
      AND t.lease_id = l.id AND t.status IN ('queued', 'running')
      AND NOT (v.status IN ('error', 'timeout') AND t.retries_left > 0)
    RETURNING l.id, l.task_id, v.status, v.msg, v.exit_code, v.started_at, v.ended_at, l.cluster, t.code_name, t.eligible_at,
      CASE WHEN v.folded_at IS NOT NULL AND o.state <> 'running' THEN 1 ELSE 0 END AS ran
  ),
  t AS (
    UPDATE tasks t SET status = l.status, msg = coalesce(l.msg, t.msg), exit_code = l.exit_code,
      start_time = coalesce(t.start_time, l.started_at::timestamptz), end_time = l.ended_at::timestamptz,
      lease_id = NULL, updated_at = $11, percent = CASE WHEN l.status = 'complete' THEN 100 ELSE t.percent END,
      run_times = t.run_times + l.ran
    FROM l WHERE t.id = l.task_id AND t.lease_id = l.id AND t.status IN ('queued', 'running')
    RETURNING t.id
  )
SELECT l.id, l.cluster, l.code_name, l.eligible_at, (SELECT count(*) FROM t)::int AS tasks FROM l
