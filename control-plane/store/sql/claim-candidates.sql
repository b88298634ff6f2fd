-- The claim's candidates where limits apply (claim-unlimited.sql has the same ones), in
-- offer order, with the limits of their package and project.
--
-- Parameters:
--   $1 cluster        text
--   $2 now            timestamptz
--   $3 slice rows     int: rows read per slice of the queue
--   $4 ageing         seconds per priority level gained while waiting
--   $5 leave out      text[]: code packages (at their limit, or asked)
--   $6 leave out      text[]: projects (likewise)
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
  )
SELECT id, code_id, max_concurrency, project_id, project_max FROM ordered ORDER BY ord
