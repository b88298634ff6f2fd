-- The queue a third-party worker's current task came from (workers.status_report `queue`; a
-- report without one clears it, as the seed says), shown by workers.get_all as `queue`.
ALTER TABLE runners ADD COLUMN current_queue text;
