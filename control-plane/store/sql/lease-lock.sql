-- A lease, locked, to record its outcome.
--
-- Parameters:
--   $1 lease          text
SELECT * FROM task_leases WHERE id = $1 FOR UPDATE
