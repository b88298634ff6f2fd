-- The queue as data (store/queue-load.ts, scheduler/queue-load.ts, the queue services API).
--
-- A code package's `category`: a label of the operator's own (the queue services' job type
-- category), inherited by a new revision like the other settings; IronWorker clients never
-- send it, and a package without one shows none.
ALTER TABLE code_revisions ADD COLUMN category text;

-- One row per recording pass of the leader: the instant it recorded (the start of its
-- interval, so two leaders recording the same interval meet on this key and the second
-- records nothing) and when it read the counts. An instant with a row here and no series
-- rows had an empty queue.
CREATE TABLE queue_load_ticks (
  at           timestamptz PRIMARY KEY,
  recorded_at  timestamptz NOT NULL
);

-- Tasks per project, code package and priority at each instant: pending (queued, delayed:
-- not yet eligible), queued (eligible, not leased), running (holding a live lease: offered,
-- accepted or running). Only series with a task are written. Read by project and time
-- (GET /2/projects/{id}/load); the BRIN index on `at` serves retention, which deletes the
-- oldest rows of every project (rows arrive in time order, so a BRIN range is tight).
CREATE TABLE queue_load (
  project_id  text NOT NULL,
  at          timestamptz NOT NULL,
  code_id     text NOT NULL,
  priority    smallint NOT NULL,
  pending     integer NOT NULL,
  queued      integer NOT NULL,
  running     integer NOT NULL,
  PRIMARY KEY (project_id, at, code_id, priority)
);
CREATE INDEX queue_load_at ON queue_load USING brin (at);

-- Per cluster at each instant, what the autoscaler sees: demand (busy: accepted or running
-- leases; queued: tasks that could be leased now) and the fleet (connected runners, their
-- slots, instances by state), so its history can be replayed.
CREATE TABLE cluster_load (
  cluster          text NOT NULL,
  at               timestamptz NOT NULL,
  busy             integer NOT NULL,
  queued           integer NOT NULL,
  runners          integer NOT NULL,
  slots            integer NOT NULL,
  instances_add    integer NOT NULL,
  instances_live   integer NOT NULL,
  instances_kill   integer NOT NULL,
  PRIMARY KEY (cluster, at)
);
CREATE INDEX cluster_load_at ON cluster_load USING brin (at);

-- The hourly roll-up, made by the leader once an hour is over and kept longer: per hour
-- the number of passes it had (`ticks`), and per series the mean over those passes (a
-- series absent from a pass counts 0 in it, so means add up across series) and the most.
CREATE TABLE queue_load_hours (
  hour   timestamptz PRIMARY KEY,
  ticks  integer NOT NULL
);
CREATE TABLE queue_load_hourly (
  project_id    text NOT NULL,
  hour          timestamptz NOT NULL,
  code_id       text NOT NULL,
  priority      smallint NOT NULL,
  pending_mean  real NOT NULL,
  queued_mean   real NOT NULL,
  running_mean  real NOT NULL,
  pending_max   integer NOT NULL,
  queued_max    integer NOT NULL,
  running_max   integer NOT NULL,
  PRIMARY KEY (project_id, hour, code_id, priority)
);
CREATE INDEX queue_load_hourly_hour ON queue_load_hourly USING brin (hour);
CREATE TABLE cluster_load_hourly (
  cluster       text NOT NULL,
  hour          timestamptz NOT NULL,
  busy_mean     real NOT NULL,
  queued_mean   real NOT NULL,
  slots_mean    real NOT NULL,
  busy_max      integer NOT NULL,
  queued_max    integer NOT NULL,
  runners_max   integer NOT NULL,
  slots_max     integer NOT NULL,
  PRIMARY KEY (cluster, hour)
);
CREATE INDEX cluster_load_hourly_hour ON cluster_load_hourly USING brin (hour);

-- Tasks made by one POST .../queue/requeue-jobs share its id, so its reply can be paged
-- (GET .../queue/requeue-jobs/{requeue_id}). Only requeued tasks are in the index.
ALTER TABLE tasks ADD COLUMN requeue_id text;
CREATE INDEX tasks_requeue ON tasks (requeue_id, id) WHERE requeue_id IS NOT NULL;
