-- The claim looks at two short, index-ordered slices of a cluster's queue: the head by
-- priority (tasks_ready) and the oldest eligible tasks, which ageing may have lifted
-- (this index); never the whole queue.
CREATE INDEX tasks_ready_age ON tasks (cluster, eligible_at, id) WHERE status = 'queued';
