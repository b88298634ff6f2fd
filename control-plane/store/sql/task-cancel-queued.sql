-- Cancels a queued task that no runner has been offered at once, and gives its place in the owner's queued-tasks quota
-- back to the owner's fullest counter (QuotasStore, store/quotas.ts). Returns the task.
--
-- Parameters:
--   $1 project        text
--   $2 task           text
--   $3 now            timestamptz
WITH
  done AS (
    UPDATE tasks SET status = 'cancelled', msg = 'Cancelled by user', end_time = $3, updated_at = $3
    WHERE project_id = $1 AND id = $2 AND status = 'queued' AND lease_id IS NULL RETURNING *
  ),
  freed AS (
    UPDATE user_queued u SET queued = u.queued - (SELECT count(*) FROM done)
    WHERE (u.user_id, u.shard) = (
        SELECT q.user_id, q.shard FROM user_queued q JOIN projects pr ON pr.user_id = q.user_id
        WHERE pr.id = $1 ORDER BY q.queued DESC LIMIT 1)
      AND u.queued >= (SELECT count(*) FROM done) AND EXISTS (SELECT 1 FROM done)
    RETURNING 1
  )
SELECT * FROM done
