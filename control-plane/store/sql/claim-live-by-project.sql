-- Live leases per project, for projects whose advisory lock the claim holds.
--
-- Parameters:
--   $1 projects       text[]
SELECT t.project_id, count(*)::int AS n FROM task_leases l JOIN tasks t ON t.id = l.task_id
WHERE l.ended_at IS NULL AND t.project_id = ANY($1::text[]) GROUP BY t.project_id
