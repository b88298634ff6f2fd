-- How a code package's tasks hand their output to the runner (Code API `log_streams`):
-- merged: stderr is joined to stdout inside the container, so the task's log keeps the exact
-- order in which lines were written (the engine carries stdout and stderr in two pipes and
-- may swap lines of the two written within a few milliseconds); separate: the two stay
-- apart, and `?stream=stderr` reads stderr alone. New packages get merged. Revisions that
-- exist keep what their tasks had until now, separate.

ALTER TABLE code_revisions
  ADD COLUMN log_streams text NOT NULL DEFAULT 'separate'
    CHECK (log_streams IN ('merged', 'separate'));
ALTER TABLE code_revisions ALTER COLUMN log_streams SET DEFAULT 'merged';
