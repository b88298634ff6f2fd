-- Per-user quotas (store/quotas.ts): clusters, code packages, active schedules and queued
-- tasks, counted across all of a user's projects. The limits come from the environment
-- (GANTRY_QUOTA_*); an operator overrides them per user (gantry user quota).

-- Operator overrides; a NULL column takes the default from the environment.
CREATE TABLE user_quotas (
  user_id       text PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
  clusters      integer CHECK (clusters >= 0),
  codes         integer CHECK (codes >= 0),
  schedules     integer CHECK (schedules >= 0),
  queued_tasks  integer CHECK (queued_tasks >= 0),
  updated_at    timestamptz NOT NULL
);

-- The queued-tasks quota is checked on the hot path (thousands of tasks a second), so it is
-- not counted there. A user's limit is split into 16 shares (shard s gets limit / 16, plus
-- one for s < limit % 16); a queueing adds its tasks to one shard's `queued` (its
-- connection's: backend pid modulo 16), in the statement that inserts them and only if that
-- stays within the shard's share. Concurrent queueings of one user then mostly lock
-- different rows (one counter would serialize them until each commits), and the shares
-- never add up to more than the limit. Nothing on the dispatch path subtracts, so the sum
-- of `queued` is an upper bound of the user's queued tasks; when a shard is full the store
-- locks all 16 rows, recounts exactly (at most once a second per user: counted_at, kept on
-- shard 0) and spreads the count over the shards again.
CREATE TABLE user_queued (
  user_id     text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  shard       smallint NOT NULL CHECK (shard >= 0 AND shard < 16),
  queued      bigint NOT NULL CHECK (queued >= 0),
  counted_at  timestamptz,
  PRIMARY KEY (user_id, shard)
) WITH (fillfactor = 50);

-- Tasks queued before quotas existed, on shard 0 (the first queueing spreads them).
INSERT INTO user_queued (user_id, shard, queued)
SELECT p.user_id, 0, count(*) FROM tasks t JOIN projects p ON p.id = t.project_id
WHERE t.status = 'queued' GROUP BY p.user_id;

-- The exact recount reads only a user's queued tasks (index-only when the pages are
-- all-visible), never the history of finished ones that tasks_project holds. The second
-- condition is always true (ids are never empty) and only the recount states it: without
-- it, any query of the queue (status = 'queued') may scan this index whole, and the
-- planner chose that over tasks_ready for the hand-off's "is a task of this cluster
-- waiting" (a scan of every queued task of every cluster).
CREATE INDEX tasks_queued_project ON tasks (project_id) WHERE status = 'queued' AND project_id > '';
-- Counts of a user's live clusters and active schedules for their quota checks.
CREATE INDEX clusters_user_live ON clusters (user_id) WHERE deleted_at IS NULL;
CREATE INDEX schedules_active_project ON schedules (project_id) WHERE status = 'scheduled';
