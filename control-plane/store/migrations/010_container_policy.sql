-- Per-cluster container policy (Clusters API `container`, lib/container-policy.ts): what a
-- task's container may do. Every capability is dropped and only those listed here are added
-- back; no-new-privileges and never-privileged are not settings. Existing clusters, the
-- `default` one included, get the defaults from the column defaults.
--
-- The checks repeat the API's bounds so that no write path (admin SQL included) can give a
-- cluster more than Docker's default capability set.

ALTER TABLE clusters
  -- capability names without CAP_, upper case, sorted, unique; only Docker's default set
  ADD COLUMN container_cap_add text[] NOT NULL DEFAULT '{}'
    CHECK (container_cap_add <@ ARRAY['AUDIT_WRITE', 'CHOWN', 'DAC_OVERRIDE', 'FOWNER', 'FSETID', 'KILL', 'MKNOD',
      'NET_BIND_SERVICE', 'NET_RAW', 'SETFCAP', 'SETGID', 'SETPCAP', 'SETUID', 'SYS_CHROOT']::text[]),
  ADD COLUMN container_pids_limit integer NOT NULL DEFAULT 1024
    CHECK (container_pids_limit BETWEEN 16 AND 1048576),
  ADD COLUMN container_read_only_rootfs boolean NOT NULL DEFAULT false,
  -- the /tmp tmpfs of a read-only root filesystem, MiB
  ADD COLUMN container_tmp_size_mb integer NOT NULL DEFAULT 64
    CHECK (container_tmp_size_mb BETWEEN 1 AND 1048576),
  -- uid[:gid] or name[:group]; NULL: the image's own user
  ADD COLUMN container_user text
    CHECK (container_user ~ '^([0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31})(:([0-9]{1,10}|[A-Za-z_][A-Za-z0-9_.-]{0,31}))?$'),
  -- RLIMIT_NOFILE, soft and hard alike
  ADD COLUMN container_nofile integer NOT NULL DEFAULT 4096
    CHECK (container_nofile BETWEEN 64 AND 1048576);
