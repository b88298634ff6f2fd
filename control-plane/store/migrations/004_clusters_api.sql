-- The Clusters API: every field of the IronWorker reference, secrets sealed at rest
-- (lib/secretbox.ts: AES-256-GCM, text "g1.<key id>.<nonce>.<tag>.<ciphertext>", bound to
-- the cluster id and field name), soft delete, sharing, and the tables the autoscaler's
-- leader loop keeps its instances and state in.

ALTER TABLE clusters
  -- per-task disk allowance; the reference's default is 10 GB
  ADD COLUMN disk_bytes               bigint NOT NULL DEFAULT 10737418240,
  -- users (ids) who may queue onto the cluster and read it, besides its owner
  ADD COLUMN shared_to                text[] NOT NULL DEFAULT '{}',
  -- who launches instances: 'ec2' (autoscale.aws given), 'local' (runner processes on the
  -- control plane's host, the embedded default), or NULL (runners are started by hand)
  ADD COLUMN provider                 text CHECK (provider IN ('ec2', 'local')),
  -- autoscale.aws without its secrets: region, instance_type, image_id, tags, key_name,
  -- subnet_ids, availability_zones, security_groups, security_group_ids,
  -- iam_instance_profile, block_device_mappings, eips
  ADD COLUMN aws                      jsonb,
  -- autoscale.aws.user_data exactly as given (never re-serialized: a YAML round-trip can change
  -- what coreos-cloudinit reads, e.g. `permissions: 0644` written back as 420)
  ADD COLUMN user_data                text,
  ADD COLUMN disable                  boolean NOT NULL DEFAULT false,
  ADD COLUMN runners_min              integer NOT NULL DEFAULT 0 CHECK (runners_min >= 0),
  -- 0: no upper bound
  ADD COLUMN runners_max              integer NOT NULL DEFAULT 0 CHECK (runners_max >= 0),
  -- 0: instance memory / memory_mb
  ADD COLUMN runners_per_instance     integer NOT NULL DEFAULT 0 CHECK (runners_per_instance >= 0),
  -- sealed secrets (never plaintext; NULL when not set)
  ADD COLUMN aws_access_key_id_enc     text,
  ADD COLUMN aws_secret_access_key_enc text,
  ADD COLUMN docker_auth_enc           text,
  ADD COLUMN docker_email_enc          text,
  -- the runner token, sealed, for rendering {{.ClusterToken}} into user_data at launch;
  -- runners still authenticate against token_hash
  ADD COLUMN token_enc                text,
  ADD COLUMN deleted_at               timestamptz;

-- Tasks name clusters, so a name is unique among live clusters; a deleted cluster frees its
-- name (its queued tasks are cancelled by the delete).
ALTER TABLE clusters DROP CONSTRAINT IF EXISTS clusters_name_key;
CREATE UNIQUE INDEX clusters_live_name ON clusters (name) WHERE deleted_at IS NULL;

-- One row per instance a provider launched (or adopted) for a cluster. `type` follows the
-- reference: ADD (launched, runner not yet up), LIVE, KILL (draining, then terminated),
-- TERMINATE (terminated at the provider). Runners link to their instance through
-- runners.instance_id = cluster_instances.instance_id (same cluster).
CREATE TABLE cluster_instances (
  id                 text PRIMARY KEY,
  cluster_id         text NOT NULL REFERENCES clusters(id),
  -- the provider's id (EC2 i-…, or the local provider's own)
  instance_id        text NOT NULL,
  provider           text NOT NULL CHECK (provider IN ('ec2', 'local')),
  type               text NOT NULL CHECK (type IN ('ADD', 'LIVE', 'KILL', 'TERMINATE')),
  -- the persisted launch intent (EC2 ClientToken) this instance came from
  intent_id          text,
  runners_total      integer NOT NULL DEFAULT 0,
  runners_available  integer NOT NULL DEFAULT 0,
  version            text,
  subnet_id          text,
  launched_at        timestamptz,
  live_at            timestamptz,
  kill_at            timestamptz,
  terminated_at      timestamptz,
  -- an ADD instance whose runner has not connected by then is failed and terminated
  boot_deadline      timestamptz,
  created_at         timestamptz NOT NULL,
  updated_at         timestamptz NOT NULL,
  UNIQUE (cluster_id, instance_id)
);
CREATE INDEX cluster_instances_active ON cluster_instances (cluster_id) WHERE type <> 'TERMINATE';

-- The autoscaler's per-cluster memory (EWMAs, cooldowns, launch intents, drain starts), so
-- a new leader resumes rather than resets. `ewma` is the fast EWMA shown in cluster stats.
CREATE TABLE autoscaler_state (
  cluster_id  text PRIMARY KEY REFERENCES clusters(id),
  state       jsonb NOT NULL DEFAULT '{}'::jsonb,
  ewma        double precision NOT NULL DEFAULT 0,
  updated_at  timestamptz NOT NULL
);
