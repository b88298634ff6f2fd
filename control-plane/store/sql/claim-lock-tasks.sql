-- Row locks on the tasks a limited claim is about to take, skipping those another claim
-- holds. By primary key only, the state checked by the caller on the locked (newest) row:
-- with the state in the WHERE, a planner whose statistics predate a burst of queued tasks
-- would read the whole queue through its partial index to find a few rows.
--
-- Parameters:
--   $1 tasks          text[]
SELECT id, status, lease_id FROM tasks WHERE id = ANY($1::text[]) FOR UPDATE SKIP LOCKED
