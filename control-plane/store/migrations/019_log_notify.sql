-- Live logs (docs/architecture.md, "Live logs"): a task whose log grows or becomes whole, or
-- that reaches a final status, is announced on the channel gantry_log (payload: the task id).
-- A trigger covers every writer (the log stream, results, cancels, sweeps, timeouts) and
-- PostgreSQL delivers the notification at commit, so a follower woken by it always finds the
-- chunks it announces. Status changes that are not final are not announced: they are most of a
-- task's updates, and a follower has nothing to do on them. One transaction's notifications of
-- one task are folded into one by PostgreSQL.
CREATE FUNCTION gantry_log_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('gantry_log', NEW.id);
  RETURN NULL;
END
$$;

CREATE TRIGGER tasks_log_notify AFTER UPDATE OF log_size, log_complete, status ON tasks
  FOR EACH ROW
  WHEN (OLD.log_size IS DISTINCT FROM NEW.log_size
     OR OLD.log_complete IS DISTINCT FROM NEW.log_complete
     OR (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('complete', 'error', 'timeout', 'cancelled', 'killed')))
  EXECUTE FUNCTION gantry_log_notify();
