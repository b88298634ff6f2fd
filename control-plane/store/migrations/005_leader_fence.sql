-- Fencing for leader work (README.md, "Several replicas (high availability)"). Every
-- transaction a leader makes first raises (or confirms) the term here; a transaction from a
-- leader whose term is lower than one already recorded updates no row and is refused, so a
-- stale leader (paused, partitioned, or one of two leaders after an etcd fault) can never
-- write after its successor has.
CREATE TABLE leader_fence (
  name        text PRIMARY KEY,
  term        bigint NOT NULL,
  holder      text NOT NULL,
  updated_at  timestamptz NOT NULL
);
