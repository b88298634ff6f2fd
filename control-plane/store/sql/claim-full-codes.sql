-- Code packages whose live leases already fill their max_concurrency (a limited claim
-- leaves them out of its scan).
--
-- Parameters: none
SELECT l.code_id FROM task_leases l JOIN codes c ON c.id = l.code_id
  JOIN code_revisions r ON r.id = c.latest_revision_id
WHERE l.ended_at IS NULL AND r.max_concurrency IS NOT NULL
GROUP BY l.code_id, r.max_concurrency HAVING count(*) >= r.max_concurrency
