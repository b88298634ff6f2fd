-- Outcome webhooks and e-mail notifications (docs/architecture.md, "Outcome deliveries").
--
-- `hooks` holds `{"webhooks": {"succeeds": [...], "fails": [...], "finishes": [...]},
-- "notify": {...}}` as the API took it: on a code revision (what its tasks inherit), on a
-- schedule (what the tasks it queues carry), and on a task: the hooks it runs with, resolved
-- when it was queued (its own or its schedule's list, else its package's), NULL for none.
ALTER TABLE code_revisions ADD COLUMN hooks jsonb;
ALTER TABLE schedules ADD COLUMN hooks jsonb;
ALTER TABLE tasks ADD COLUMN hooks jsonb;

-- The outbox: one row per receiver (a URL, an address) of one task's outcome, written by the
-- trigger below in the transaction that records the final status, whichever writer that is
-- (a runner's result, a cancel, a sweep, a timeout). The delivery loop of any replica sends
-- it; `id` is the idempotency key every attempt carries (webhook-id, the Message-ID).
--
-- A row is `pending` until it is `delivered` or `failed` (given up: retried for the bounded
-- time, or refused for good). A replica sending it moves `next_at` to when its claim lapses
-- and sets `in_flight`; a replica that dies mid-send leaves a claim that lapses, and another
-- sends again under the same id.
CREATE TABLE deliveries (
  id            text PRIMARY KEY,
  project_id    text NOT NULL,
  task_id       text NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
  kind          text NOT NULL CHECK (kind IN ('webhook', 'email')),
  target        text NOT NULL,
  events        text[] NOT NULL,
  status        text NOT NULL,
  state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
  in_flight     boolean NOT NULL DEFAULT false,
  attempts      integer NOT NULL DEFAULT 0,
  created_at    timestamptz NOT NULL,
  -- Retries run until this time after it (a redelivery starts the window again).
  retry_from    timestamptz NOT NULL,
  next_at       timestamptz NOT NULL,
  delivered_at  timestamptz,
  last_error    text
);
-- The loop's claim walks the projects that have work, then each one's due rows, and counts
-- each one's sends in flight (few, whatever the backlog); its timer reads the next due time.
CREATE INDEX deliveries_due ON deliveries (project_id, next_at) WHERE state = 'pending';
CREATE INDEX deliveries_in_flight ON deliveries (project_id) WHERE in_flight;
CREATE INDEX deliveries_next ON deliveries (next_at) WHERE state = 'pending';
CREATE INDEX deliveries_task ON deliveries (task_id);

-- Every attempt of a delivery, for GET .../tasks/{id}/deliveries.
CREATE TABLE delivery_attempts (
  delivery_id  text NOT NULL REFERENCES deliveries(id) ON DELETE CASCADE,
  n            integer NOT NULL,
  at           timestamptz NOT NULL,
  status_code  integer,
  error        text,
  latency_ms   integer NOT NULL,
  response     text,
  PRIMARY KEY (delivery_id, n)
);

-- A project's signing secret (sealed, lib/secretbox.ts), and the one before it while a
-- rotation's overlap lasts: deliveries are signed with both until then.
CREATE TABLE project_signing_secrets (
  project_id      text PRIMARY KEY REFERENCES projects(id) ON DELETE CASCADE,
  secret          text NOT NULL,
  previous        text,
  previous_until  timestamptz,
  rotated_at      timestamptz NOT NULL
);

-- The lists an outcome reaches: `finishes` for every final status, `succeeds` for complete,
-- `fails` for error, timeout and killed. A receiver named in several of them gets one
-- delivery, listing them. Its id is derived from the task, the kind and the target, so a
-- task's outcome can only ever be written once per receiver. The times come from the row
-- (the application's clock), not the database's.
CREATE FUNCTION gantry_outcome_deliveries() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  ended timestamptz := coalesce(NEW.end_time, NEW.updated_at);
  events text[] := ARRAY['finishes'] || CASE
    WHEN NEW.status = 'complete' THEN ARRAY['succeeds']
    WHEN NEW.status IN ('error', 'timeout', 'killed') THEN ARRAY['fails']
    ELSE ARRAY[]::text[] END;
BEGIN
  INSERT INTO deliveries (id, project_id, task_id, kind, target, events, status, created_at, retry_from, next_at)
  SELECT substr(md5(NEW.id || ' ' || k.kind || ' ' || x.target), 1, 24), NEW.project_id, NEW.id, k.kind, x.target,
    array_agg(e.event ORDER BY e.event), NEW.status, ended, ended, ended
  FROM (VALUES ('webhook', 'webhooks'), ('email', 'notify')) AS k(kind, field)
  CROSS JOIN LATERAL unnest(events) AS e(event)
  CROSS JOIN LATERAL jsonb_array_elements_text(coalesce(NEW.hooks -> k.field -> e.event, '[]'::jsonb)) AS x(target)
  GROUP BY k.kind, x.target;
  IF FOUND THEN
    PERFORM pg_notify('gantry_delivery', NEW.project_id);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER tasks_outcome_deliveries AFTER UPDATE OF status ON tasks
  FOR EACH ROW
  WHEN (NEW.hooks IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status
    AND NEW.status IN ('complete', 'error', 'timeout', 'cancelled', 'killed'))
  EXECUTE FUNCTION gantry_outcome_deliveries();
