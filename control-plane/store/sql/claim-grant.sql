-- Leases for tasks a limited claim chose and locked, and their offers, in the order given.
-- The task keeps its status and updated_at (it is still queued to its user), so the update
-- touches no indexed column and can stay on its heap page (a HOT update, when the page has
-- room). Each attempt has its own log (the earlier attempts' stay, under their own attempt
-- number): a task offered again starts an empty one, so this attempt's output may be stored
-- as soon as it arrives, even before the Accept.
--
-- Parameters:
--   $1 tasks          text[]: in offer order
--   $2 lease ids      text[]: one new id per task
--   $3 runner         text
--   $4 now            timestamptz
--   $5 epoch          int: the runner's session epoch
--   $6 expires        timestamptz: the accept deadline
WITH
  v AS (SELECT * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS v(task_id, lease_id, ord)),
  upd AS (
    UPDATE tasks t SET lease_id = v.lease_id, runner_id = $3, attempt = t.attempt + 1,
      log_size = 0, log_crc = 0, log_complete = false
    FROM v WHERE t.id = v.task_id
    RETURNING t.id, t.project_id, t.code_id, t.code_name, t.code_rev, t.code_revision_id, t.payload, t.timeout,
      t.priority, t.cluster, t.schedule_id, t.attempt, v.lease_id, v.ord
  ),
  ins AS (  -- executed although not referenced: data-modifying CTEs always run
    INSERT INTO task_leases (id, task_id, attempt, runner_id, session_epoch, code_id, cluster, granted_at, expires_at, state)
    SELECT lease_id, id, attempt, $3, $5, code_id, cluster, $4, $6, 'offered' FROM upd
    RETURNING id
  )
SELECT upd.lease_id, upd.attempt, upd.id AS task_id, upd.project_id, upd.code_id, upd.code_name, upd.code_rev,
  upd.code_revision_id, r.image, r.command, r.env_vars, r.config, r.checksum, r.log_streams, upd.payload, upd.timeout,
  upd.priority, upd.cluster, upd.schedule_id, $6::timestamptz AS expires_at
FROM upd JOIN code_revisions r ON r.id = upd.code_revision_id ORDER BY upd.ord
