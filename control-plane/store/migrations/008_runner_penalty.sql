-- A runner at fault (it could not run a task through its own fault: its Docker engine is
-- unreachable, its disk is full; or it rejected an offer) is offered nothing until
-- penalty_until. The penalty lives here rather than in the session, so a runner that
-- reconnects, to this replica or another, is still penalised. penalty_ms is the length of
-- the last penalty (the next one doubles it); a task the runner starts resets it to 0.
ALTER TABLE runners
  ADD COLUMN penalty_ms integer NOT NULL DEFAULT 0,
  ADD COLUMN penalty_until timestamptz,
  ADD COLUMN penalty_reason text;
