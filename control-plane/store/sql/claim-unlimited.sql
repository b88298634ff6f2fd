-- The claim as one statement, for a queue head without concurrency limits: candidates,
-- row locks on the first $7 of them in offer order, leases and offers in one round trip.
-- `limited` is true (and nothing is claimed) when a candidate's package or project has a
-- limit: those claims go through claim-candidates.sql and claim-grant.sql.
--
-- Candidates: short slices of the cluster's queue, each read in the order of the one
-- queue index (tasks_ready) — the head by priority, and at each lower level the oldest
-- tasks, which ageing may have lifted — never the whole queue; then ageing, round-robin
-- across packages within a level, and `ord`, the order of offers. claim-candidates.sql
-- has the same candidates.
--
-- Parameters:
--   $1 cluster        text
--   $2 now            timestamptz
--   $3 slice rows     int: rows read per slice of the queue
--   $4 ageing         seconds per priority level gained while waiting
--   $5 leave out      text[]: code packages
--   $6 leave out      text[]: projects
--   $7 wanted         int: tasks to claim at most
--   $8 lease ids      text[]: one new id per task that may be claimed, in offer order
--   $9 runner         text
--   $10 epoch         int: the runner's session epoch
--   $11 expires       timestamptz: the accept deadline
WITH
  head AS (
    (SELECT t.id, t.code_id, t.project_id, t.priority, t.eligible_at FROM tasks t JOIN codes c ON c.id = t.code_id AND NOT c.paused
     WHERE t.status = 'queued' AND t.lease_id IS NULL AND t.cluster = $1 AND t.eligible_at <= $2
       AND NOT (t.code_id = ANY($5::text[])) AND NOT (t.project_id = ANY($6::text[]))
     ORDER BY t.priority DESC, t.eligible_at, t.id LIMIT $3)
    UNION
    (SELECT t.id, t.code_id, t.project_id, t.priority, t.eligible_at FROM tasks t JOIN codes c ON c.id = t.code_id AND NOT c.paused
     WHERE t.status = 'queued' AND t.lease_id IS NULL AND t.cluster = $1 AND t.priority = 1
       AND t.eligible_at <= $2::timestamptz - make_interval(secs => $4)
       AND NOT (t.code_id = ANY($5::text[])) AND NOT (t.project_id = ANY($6::text[]))
     ORDER BY t.eligible_at, t.id LIMIT $3)
    UNION
    (SELECT t.id, t.code_id, t.project_id, t.priority, t.eligible_at FROM tasks t JOIN codes c ON c.id = t.code_id AND NOT c.paused
     WHERE t.status = 'queued' AND t.lease_id IS NULL AND t.cluster = $1 AND t.priority = 0
       AND t.eligible_at <= $2::timestamptz - make_interval(secs => $4)
       AND NOT (t.code_id = ANY($5::text[])) AND NOT (t.project_id = ANY($6::text[]))
     ORDER BY t.eligible_at, t.id LIMIT $3)
  ),
  -- The slices carry what the ordering needs: joining them back to tasks by id would let a
  -- planner pick a hash join over a sequential scan of the table for a few hundred rows.
  c AS (
    SELECT h.id, h.code_id, h.eligible_at, r.max_concurrency, h.project_id, p.max_running AS project_max,
      LEAST(2, h.priority + floor(extract(epoch FROM ($2::timestamptz - h.eligible_at)) / $4)::int) AS eff
    FROM head h JOIN codes c ON c.id = h.code_id
    JOIN code_revisions r ON r.id = c.latest_revision_id JOIN projects p ON p.id = h.project_id
  ),
  ordered AS (
    SELECT x.*, row_number() OVER (ORDER BY eff DESC, rr, eligible_at, id) AS ord FROM (
      SELECT c.*, row_number() OVER (PARTITION BY code_id, eff ORDER BY eligible_at, id) AS rr FROM c
    ) x
  ),
  limited AS (SELECT EXISTS (SELECT 1 FROM c WHERE max_concurrency IS NOT NULL OR project_max IS NOT NULL) AS yes),
  -- Candidates in offer order, each locked by primary key as it comes (a lateral lookup:
  -- never a join over the table), until $7 are held. The state is checked on the locked
  -- (newest) row: with it in the WHERE of `tasks t`, a planner whose statistics predate a
  -- burst of queued tasks could read the whole queue through its partial index.
  pick AS (
    SELECT o.id, o.ord, t.status, t.lease_id
    FROM (SELECT id, ord FROM ordered WHERE NOT (SELECT yes FROM limited) ORDER BY ord) o
    CROSS JOIN LATERAL (SELECT t.status, t.lease_id FROM tasks t WHERE t.id = o.id FOR UPDATE SKIP LOCKED) t
    LIMIT $7
  ),
  v AS (
    SELECT p.id AS task_id, ($8::text[])[row_number() OVER (ORDER BY p.ord)] AS lease_id, p.ord
    FROM pick p WHERE p.status = 'queued' AND p.lease_id IS NULL
  ),
  -- The grant, as in claim-grant.sql: the task keeps its status and updated_at (it is still
  -- queued to its user), so the update touches no indexed column and can stay on its heap
  -- page. Each attempt has its own log: a task offered again starts an empty one, and the
  -- earlier attempts' logs stay.
  upd AS (
    UPDATE tasks t SET lease_id = v.lease_id, runner_id = $9, attempt = t.attempt + 1,
      log_size = 0, log_crc = 0, log_complete = false
    FROM v WHERE t.id = v.task_id
    RETURNING t.id, t.project_id, t.code_id, t.code_name, t.code_rev, t.code_revision_id, t.payload, t.timeout,
      t.priority, t.cluster, t.schedule_id, t.attempt, v.lease_id, v.ord
  ),
  ins AS (  -- executed although not referenced: data-modifying CTEs always run
    INSERT INTO task_leases (id, task_id, attempt, runner_id, session_epoch, code_id, cluster, granted_at, expires_at, state)
    SELECT lease_id, id, attempt, $9, $10, code_id, cluster, $2, $11, 'offered' FROM upd
    RETURNING id
  )
SELECT (SELECT yes FROM limited) AS limited, g.* FROM (SELECT 1) one LEFT JOIN (
  SELECT upd.lease_id, upd.attempt, upd.id AS task_id, upd.project_id, upd.code_id, upd.code_name, upd.code_rev,
    upd.code_revision_id, r.image, r.command, r.env_vars, r.config, r.checksum, r.log_streams, upd.payload, upd.timeout,
    upd.priority, upd.cluster, upd.schedule_id, $11::timestamptz AS expires_at, upd.ord
  FROM upd JOIN code_revisions r ON r.id = upd.code_revision_id
) g ON true ORDER BY g.ord
