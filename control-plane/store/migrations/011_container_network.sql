-- The network a cluster's task containers join (Clusters API `container.network`,
-- lib/container-policy.ts): bridge (the engine's default bridge, outbound network as with
-- `docker run`), none, host, or a network made on the runners' engines. New clusters get
-- bridge. Clusters that exist keep what their tasks had until now, none (runners ran every
-- task without network unless GANTRY_RUNNER_NETWORK said otherwise, which still wins).
--
-- The check repeats the API's rule, so no write path can name another container's
-- namespace (container:<id>) or a malformed name.

ALTER TABLE clusters
  ADD COLUMN container_network text NOT NULL DEFAULT 'none'
    CHECK (container_network ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$');
ALTER TABLE clusters ALTER COLUMN container_network SET DEFAULT 'bridge';
