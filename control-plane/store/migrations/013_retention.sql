-- Retention (store/retention.ts, scheduler/retention.ts): the leader deletes finished tasks,
-- with their log chunks and leases, and finished schedules, once they are older than their
-- period, a bounded batch at a time. These indexes let each batch read only the rows it may
-- delete, oldest first, instead of scanning the tables.
--
-- Finished tasks by the time they ended, with the id as tie-break (the pass's cursor is
-- (end_time, id)). A task enters it once, when it reaches a final status (that update
-- changes status and end_time, so it was never a HOT update); live tasks are not in it.
CREATE INDEX tasks_finished_end ON tasks (end_time, id)
  WHERE status IN ('complete', 'error', 'cancelled', 'killed', 'timeout');

-- The retries of a task (tasks whose original_task_id names it): a retry chain is deleted
-- whole, and a task retried twice by hand has two, only the last named by its retry_task_id.
-- Only retries are in it.
CREATE INDEX tasks_retry_of ON tasks (original_task_id) WHERE original_task_id IS NOT NULL;

-- Finished schedules by the time they finished (complete or cancelled: the last update a
-- schedule gets).
CREATE INDEX schedules_finished_updated ON schedules (updated_at, id) WHERE status IN ('complete', 'cancelled');
