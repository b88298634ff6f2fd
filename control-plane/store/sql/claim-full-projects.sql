-- Projects whose live leases already fill their limit on running tasks (a limited claim
-- leaves them out of its scan).
--
-- Parameters: none
SELECT p.id FROM projects p WHERE p.max_running IS NOT NULL AND p.max_running <= (
  SELECT count(*) FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE l.ended_at IS NULL AND t.project_id = p.id)
