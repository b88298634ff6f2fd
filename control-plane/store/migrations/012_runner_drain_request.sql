-- An operator's request that a runner drain (`gantry runner drain`): the replica holding the
-- runner's session reads it from the runner's Beat (the beat's own UPDATE returns it, so no
-- replica polls) and sends the runner a Drain frame. A new Hello of the runner clears it (an
-- operator who restarts a drained runner means it to serve again).

ALTER TABLE runners
  ADD COLUMN drain_requested_at timestamptz,
  ADD COLUMN drain_mode text CHECK (drain_mode IN ('finish', 'hand_back')),
  -- how long running tasks may take to finish, from the request
  ADD COLUMN drain_timeout_s integer CHECK (drain_timeout_s >= 0);
