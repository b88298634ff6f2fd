-- workers.get_stats (store/series.ts): per runner, metric (and variant when split) and
-- bucket of `interval` seconds, the mean, least, greatest, last value and the samples
-- counted, of the requested metrics. Each table is read over its own time range (the caller
-- picks them: hours for the old part, minutes, then raw samples for the part not yet rolled
-- up); an empty range reads nothing. Series are found by cluster first, so a user reads only
-- runners of clusters they may see; each series' rows are then read by its primary key
-- (LATERAL: the generic plan cannot know how few series there are, and would scan).
--
-- Parameters:
--   $1 clusters   text[]
--   $2 runners    text[], or null for every runner of those clusters
--   $3 keys       text[] (metric names)
--   $4 split      boolean (by variant)
--   $5 interval   int (seconds)
--   $6 raw_from   timestamptz
--   $7 raw_to     timestamptz
--   $8 m_from     timestamptz
--   $9 m_to       timestamptz
--   $10 h_from    timestamptz
--   $11 h_to      timestamptz
WITH pos AS (
  SELECT s.id AS series_id, s.runner_id, k.i, s.metrics[k.i] AS metric, s.variants[k.i] AS variant
  FROM runner_stat_series s, generate_subscripts(s.metrics, 1) AS k(i)
  WHERE s.cluster_id = ANY($1::text[]) AND ($2::text[] IS NULL OR s.runner_id = ANY($2::text[]))
    AND s.metrics[k.i] = ANY($3::text[])
), v AS (
  SELECT p.runner_id, p.metric, p.variant, r.ts, 1 AS n, r.vals[p.i] AS a, r.vals[p.i] AS mn, r.vals[p.i] AS mx, r.vals[p.i] AS l
  FROM pos p, LATERAL (SELECT ts, vals FROM runner_stats_raw WHERE series_id = p.series_id AND ts >= $6 AND ts < $7) r
  UNION ALL
  SELECT p.runner_id, p.metric, p.variant, r.ts, r.n, r.avg[p.i], r.min[p.i], r.max[p.i], r.last[p.i]
  FROM pos p, LATERAL (SELECT ts, n, avg, min, max, last FROM runner_stats_1m WHERE series_id = p.series_id AND ts >= $8 AND ts < $9) r
  UNION ALL
  SELECT p.runner_id, p.metric, p.variant, r.ts, r.n, r.avg[p.i], r.min[p.i], r.max[p.i], r.last[p.i]
  FROM pos p, LATERAL (SELECT ts, n, avg, min, max, last FROM runner_stats_1h WHERE series_id = p.series_id AND ts >= $10 AND ts < $11) r
)
SELECT runner_id, metric, CASE WHEN $4::boolean THEN variant ELSE '' END AS variant,
  (floor(extract(epoch FROM ts) / $5::int) * $5::int)::bigint AS d,
  (sum(a * n) / sum(n))::float8 AS avg, min(mn)::float8 AS min, max(mx)::float8 AS max, sum(n)::bigint AS count,
  ((array_agg(l ORDER BY ts DESC))[1])::float8 AS last
FROM v
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2, 3, 4
