-- Offered → accepted for leases of one runner: the runner reserved a slot. Returns the
-- leases accepted (one still offered to this runner, at this attempt).
--
-- Parameters:
--   $1 leases         text[]
--   $2 attempts       int[]: one per lease
--   $3 runner         text
--   $4 expires        timestamptz: now plus the lease TTL
--   $5 now            timestamptz: when it was accepted (it becomes an execution)
WITH v AS (SELECT * FROM unnest($1::text[], $2::int[]) AS v(id, attempt))
UPDATE task_leases l SET state = 'accepted', expires_at = $4, accepted_at = $5
FROM v WHERE l.id = v.id AND l.attempt = v.attempt AND l.runner_id = $3 AND l.state = 'offered'
RETURNING l.id
