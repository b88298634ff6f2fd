-- workers.get_activity_report (store/series.ts): per bucket of `interval` seconds, how many
-- runners of these clusters reported (total) and how many of them had a busy slot (active).
-- Tables and ranges as in stats-read.sql.
--
-- Parameters:
--   $1 clusters   text[]
--   $2 interval   int (seconds)
--   $3 raw_from   timestamptz
--   $4 raw_to     timestamptz
--   $5 m_from     timestamptz
--   $6 m_to       timestamptz
--   $7 h_from     timestamptz
--   $8 h_to       timestamptz
WITH s AS (
  SELECT id, runner_id FROM runner_stat_series WHERE cluster_id = ANY($1::text[])
), v AS (
  SELECT s.runner_id, r.ts, r.busy FROM s JOIN runner_stats_raw r ON r.series_id = s.id AND r.ts >= $3 AND r.ts < $4
  UNION ALL
  SELECT s.runner_id, r.ts, r.busy FROM s JOIN runner_stats_1m r ON r.series_id = s.id AND r.ts >= $5 AND r.ts < $6
  UNION ALL
  SELECT s.runner_id, r.ts, r.busy FROM s JOIN runner_stats_1h r ON r.series_id = s.id AND r.ts >= $7 AND r.ts < $8
)
SELECT (floor(extract(epoch FROM ts) / $2::int) * $2::int)::bigint AS d,
  count(DISTINCT runner_id)::int AS total,
  count(DISTINCT runner_id) FILTER (WHERE busy > 0)::int AS active
FROM v
GROUP BY 1
ORDER BY 1
