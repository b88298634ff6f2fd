-- Cron schedules (Schedules API `cron`, `timezone`): a five-field cron expression read in an
-- IANA time zone, instead of run_every. The unique (schedule_id, scheduled_for) index already
-- makes each fire instant queue at most one task, whoever leads.

ALTER TABLE schedules
  ADD COLUMN cron text,
  ADD COLUMN timezone text,
  ADD CONSTRAINT schedules_cron_or_every CHECK (cron IS NULL OR run_every IS NULL),
  ADD CONSTRAINT schedules_timezone_with_cron CHECK (timezone IS NULL OR cron IS NOT NULL);
