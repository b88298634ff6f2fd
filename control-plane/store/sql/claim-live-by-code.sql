-- Live leases per code package, for packages whose advisory lock the claim holds.
--
-- Parameters:
--   $1 packages       text[]
SELECT code_id, count(*)::int AS n FROM task_leases WHERE ended_at IS NULL AND code_id = ANY($1::text[])
GROUP BY code_id
