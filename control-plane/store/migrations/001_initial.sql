-- Gantry's system of record. Every time value is written by the application's clock.

CREATE TABLE users (
  id          text PRIMARY KEY,
  email       text NOT NULL UNIQUE,
  created_at  timestamptz NOT NULL
);

-- OAuth tokens belong to users and work on all of their projects. Only a SHA-256 of the
-- token is kept.
CREATE TABLE tokens (
  id          text PRIMARY KEY,
  user_id     text NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  token_hash  text NOT NULL UNIQUE,
  name        text NOT NULL DEFAULT '',
  created_at  timestamptz NOT NULL,
  revoked_at  timestamptz
);

CREATE TABLE projects (
  id          text PRIMARY KEY,
  user_id     text NOT NULL REFERENCES users(id),
  name        text NOT NULL,
  created_at  timestamptz NOT NULL
);
CREATE INDEX projects_user ON projects (user_id);

-- A code package; each upload adds a revision and points latest_revision_id at it.
CREATE TABLE codes (
  id                  text PRIMARY KEY,
  project_id          text NOT NULL REFERENCES projects(id),
  name                text NOT NULL,
  rev                 integer NOT NULL,
  latest_revision_id  text NOT NULL,
  paused              boolean NOT NULL DEFAULT false,
  created_at          timestamptz NOT NULL,
  updated_at          timestamptz NOT NULL,
  deleted_at          timestamptz
);
CREATE UNIQUE INDEX codes_project_name ON codes (project_id, name) WHERE deleted_at IS NULL;

CREATE TABLE code_revisions (
  id                text PRIMARY KEY,
  code_id           text NOT NULL REFERENCES codes(id),
  project_id        text NOT NULL,
  rev               integer NOT NULL,
  image             text NOT NULL,
  command           text,
  config            text,
  max_concurrency   integer,
  retries           integer NOT NULL DEFAULT 0,
  retries_delay     integer NOT NULL DEFAULT 0,
  default_priority  smallint NOT NULL DEFAULT 0,
  env_vars          jsonb NOT NULL DEFAULT '{}'::jsonb,
  stack             text,
  file_name         text,
  checksum          text,
  code_size         integer,
  created_at        timestamptz NOT NULL,
  UNIQUE (code_id, rev)
);

-- Zip bundles, apart from the revision rows so listing revisions never reads them.
CREATE TABLE code_archives (
  revision_id  text PRIMARY KEY REFERENCES code_revisions(id),
  data         bytea NOT NULL
);

CREATE TABLE tasks (
  id                   text PRIMARY KEY,
  project_id           text NOT NULL REFERENCES projects(id),
  code_id              text NOT NULL REFERENCES codes(id),
  code_name            text NOT NULL,
  code_revision_id     text NOT NULL REFERENCES code_revisions(id),
  code_rev             integer NOT NULL,
  status               text NOT NULL
    CHECK (status IN ('queued', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout')),
  priority             smallint NOT NULL,
  cluster              text NOT NULL,
  timeout              integer NOT NULL,
  delay                integer NOT NULL DEFAULT 0,
  payload              text NOT NULL,
  label                text,
  msg                  text,
  percent              smallint,
  schedule_id          text,
  -- the schedule period this task was fired for; unique per schedule (fires once a period)
  scheduled_for        timestamptz,
  -- retries are new tasks: original_task_id names the task retried, retry_count its depth
  original_task_id     text,
  retry_task_id        text,
  retry_count          integer NOT NULL DEFAULT 0,
  -- user-visible retry budget (code's retries at queue time) for real task failures
  retries_left         integer NOT NULL DEFAULT 0,
  retries_delay        integer NOT NULL DEFAULT 0,
  created_at           timestamptz NOT NULL,
  updated_at           timestamptz NOT NULL,
  -- when a queued task may be handed out: created_at + delay
  eligible_at          timestamptz NOT NULL,
  start_time           timestamptz,
  end_time             timestamptz,
  log_size             bigint NOT NULL DEFAULT 0,
  exit_code            integer,
  -- the current lease, when running (history in task_leases)
  attempt              integer NOT NULL DEFAULT 0,
  lease_id             text,
  runner_id            text,
  lease_expires_at     timestamptz,
  -- runner loss is not a task error: it spends this internal budget, then ends 'killed'
  runner_losses        integer NOT NULL DEFAULT 0,
  cancel_requested_at  timestamptz
);
CREATE INDEX tasks_ready ON tasks (cluster, priority DESC, eligible_at, id) WHERE status = 'queued';
CREATE INDEX tasks_project ON tasks (project_id, id DESC);
CREATE INDEX tasks_project_code ON tasks (project_id, code_name, id DESC);
CREATE INDEX tasks_code_updated ON tasks (code_id, updated_at);
CREATE INDEX tasks_lease_expiry ON tasks (lease_expires_at) WHERE status = 'running';
CREATE UNIQUE INDEX tasks_schedule_period ON tasks (schedule_id, scheduled_for) WHERE schedule_id IS NOT NULL;

-- Every lease ever granted: the history that concurrency invariants are checked against.
CREATE TABLE task_leases (
  id             text PRIMARY KEY,
  task_id        text NOT NULL REFERENCES tasks(id),
  attempt        integer NOT NULL,
  runner_id      text NOT NULL,
  session_epoch  bigint NOT NULL DEFAULT 0,
  code_id        text NOT NULL,
  granted_at     timestamptz NOT NULL,
  expires_at     timestamptz NOT NULL,
  started_at     timestamptz,
  ended_at       timestamptz,
  outcome        text,
  UNIQUE (task_id, attempt)
);
CREATE INDEX task_leases_open ON task_leases (code_id) WHERE ended_at IS NULL;

-- Task output: stream 1 stdout, 2 stderr, 0 notes from Gantry itself. byte_offset is the
-- chunk's offset within its stream; seq orders chunks across streams for the combined log.
CREATE TABLE task_log_chunks (
  task_id      text NOT NULL REFERENCES tasks(id),
  stream       smallint NOT NULL CHECK (stream IN (0, 1, 2)),
  byte_offset  bigint NOT NULL,
  seq          bigserial,
  data         bytea NOT NULL,
  PRIMARY KEY (task_id, stream, byte_offset)
);
CREATE INDEX task_log_chunks_seq ON task_log_chunks (task_id, seq);

CREATE TABLE schedules (
  id             text PRIMARY KEY,
  project_id     text NOT NULL REFERENCES projects(id),
  code_name      text NOT NULL,
  name           text,
  payload        text NOT NULL,
  priority       smallint NOT NULL DEFAULT 0,
  timeout        integer NOT NULL,
  cluster        text NOT NULL,
  task_delay     integer NOT NULL DEFAULT 0,
  start_at       timestamptz NOT NULL,
  run_every      integer,
  end_at         timestamptz,
  run_times      integer,
  run_count      integer NOT NULL DEFAULT 0,
  error_count    integer NOT NULL DEFAULT 0,
  last_run_time  timestamptz,
  next_start     timestamptz,
  status         text NOT NULL CHECK (status IN ('scheduled', 'complete', 'cancelled')),
  msg            text,
  created_at     timestamptz NOT NULL,
  updated_at     timestamptz NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_start) WHERE status = 'scheduled';
CREATE INDEX schedules_project ON schedules (project_id, id DESC);
