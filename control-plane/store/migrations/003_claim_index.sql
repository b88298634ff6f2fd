-- The claim looks at two short, index-ordered slices of a cluster's queue: the head by
-- priority (tasks_ready) and the oldest eligible tasks, which ageing may have lifted
-- (this index); never the whole queue.
CREATE INDEX tasks_ready_age ON tasks (cluster, eligible_at, id) WHERE status = 'queued';

-- Lease expiry lives on task_leases (task_leases_expiry); this column and index on tasks
-- were never used, and the index made every task update more expensive.
DROP INDEX tasks_lease_expiry;
ALTER TABLE tasks DROP COLUMN lease_expires_at;

-- Tasks are updated several times in their life; room on each page lets updates that touch
-- no indexed column (log progress, progress messages) stay on the page (HOT updates).
ALTER TABLE tasks SET (fillfactor = 70);
ALTER TABLE task_leases SET (fillfactor = 70);
