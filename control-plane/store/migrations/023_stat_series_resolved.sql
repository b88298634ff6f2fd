-- When a series was last resolved by a recorder (store/series.ts): made, or found again when
-- a runner (re)connects or its layout changes back. Retention deletes a series once none of
-- its samples is left at any level and no recorder has resolved it for the raw samples'
-- period, so the series of runners long gone (an autoscaled fleet makes new runner ids all
-- the time) do not pile up; a series just resolved is never taken from a recorder about to
-- write into it.
ALTER TABLE runner_stat_series ADD COLUMN resolved_at timestamptz;
UPDATE runner_stat_series SET resolved_at = created_at;
ALTER TABLE runner_stat_series ALTER COLUMN resolved_at SET NOT NULL;
CREATE INDEX runner_stat_series_resolved ON runner_stat_series (resolved_at);
