-- Runners, clusters and leases for the runner protocol (proto/README.md, 4 Lease lifecycle).

-- A cluster is a pool of runners; tasks name it. Runners authenticate with its id and a
-- token kept only as a SHA-256 hash. (Migration 004 adds the Clusters API's fields.)
CREATE TABLE clusters (
  id          text PRIMARY KEY,
  name        text NOT NULL UNIQUE,
  user_id     text REFERENCES users(id),
  token_hash  text NOT NULL,
  memory_mb   integer NOT NULL DEFAULT 512,
  created_at  timestamptz NOT NULL,
  updated_at  timestamptz NOT NULL
);

-- One row per runner (stable runner_id); session_epoch grows with every new session, and
-- each lease records the epoch of the session it was granted to or kept by.
CREATE TABLE runners (
  id               text PRIMARY KEY,
  cluster_id       text NOT NULL REFERENCES clusters(id),
  session_epoch    bigint NOT NULL DEFAULT 0,
  session_id       text,
  server_id        text,
  boot_id          text,
  hostname         text,
  agent_version    text,
  docker_version   text,
  instance_id      text,
  slots            integer NOT NULL DEFAULT 0,
  memory_mb        integer,
  connected        boolean NOT NULL DEFAULT false,
  draining         boolean NOT NULL DEFAULT false,
  connected_at     timestamptz,
  last_beat_at     timestamptz,
  disconnected_at  timestamptz,
  stats            jsonb,
  created_at       timestamptz NOT NULL
);
CREATE INDEX runners_cluster ON runners (cluster_id);

-- Lease states: offered -> accepted -> running -> done. expires_at is the accept deadline
-- while offered, then last beat + lease TTL.
ALTER TABLE task_leases
  ADD COLUMN state text NOT NULL DEFAULT 'offered' CHECK (state IN ('offered', 'accepted', 'running', 'done')),
  ADD COLUMN cluster text NOT NULL DEFAULT 'default',
  ADD COLUMN container_id text,
  ADD COLUMN cancel_sent_at timestamptz;
CREATE INDEX task_leases_runner_open ON task_leases (runner_id) WHERE ended_at IS NULL;
CREATE INDEX task_leases_expiry ON task_leases (expires_at) WHERE ended_at IS NULL;

ALTER TABLE tasks
  ADD COLUMN log_complete boolean NOT NULL DEFAULT false,
  -- how many times a container was started for the task (IronWorker's run_times)
  ADD COLUMN run_times integer NOT NULL DEFAULT 0,
  -- CRC-32 of the stored log so far, checked against the runner's at the final frame
  ADD COLUMN log_crc bigint NOT NULL DEFAULT 0;

-- Logs are addressed by their byte offset in the combined log of the task's current attempt
-- (all streams in arrival order); each chunk records its stream, so stdout and stderr can be
-- read apart. A new attempt starts a new log.
DROP TABLE task_log_chunks;
CREATE TABLE task_log_chunks (
  task_id      text NOT NULL REFERENCES tasks(id),
  byte_offset  bigint NOT NULL,
  stream       smallint NOT NULL CHECK (stream IN (0, 1, 2)),
  data         bytea NOT NULL,
  PRIMARY KEY (task_id, byte_offset)
);
