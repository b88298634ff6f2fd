-- A Beat renews the accepted and running leases it lists. Returns those renewed.
--
-- Parameters:
--   $1 leases         text[]
--   $2 runner         text
--   $3 expires        timestamptz: now plus the lease TTL
UPDATE task_leases SET expires_at = $3
WHERE id = ANY($1::text[]) AND runner_id = $2 AND ended_at IS NULL AND state IN ('accepted', 'running')
RETURNING id
