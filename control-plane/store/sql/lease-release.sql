-- Ends an offered or accepted lease without a run (Reject, an accept deadline passed, a
-- hand-back before start, no concurrency slot). Returns its task.
--
-- Parameters:
--   $1 lease          text
--   $2 attempt        int
--   $3 runner         text, or null for any
--   $4 now            timestamptz
--   $5 outcome        text: why
UPDATE task_leases SET state = 'done', ended_at = $4, outcome = $5
WHERE id = $1 AND attempt = $2 AND ($3::text IS NULL OR runner_id = $3) AND state IN ('offered', 'accepted')
RETURNING task_id
