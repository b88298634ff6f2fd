-- workers.get_stats (store/series.ts): per runner, metric (and variant when split) and
-- bucket of `interval` seconds, the mean, least, greatest, last value and the samples
-- counted, of the requested metrics, as one row per runner and metric (and variant). Each table is read over its own time range (the caller
-- picks them: hours for the old part, minutes, then raw samples for the part not yet rolled
-- up); an empty range reads nothing. Series are found by cluster first, so a user reads only
-- runners of clusters they may see; each series' rows are then read once by its primary key,
-- whatever number of its metrics (or cores) is asked for (LATERAL with OFFSET 0: flattened
-- into a join, any plan, generic or custom, may hash the whole table instead).
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
WITH sel AS MATERIALIZED (
  -- Each series once, with the positions of the requested metrics in its layout.
  SELECT s.id AS series_id, s.runner_id, array_agg(k.i) AS idx, array_agg(s.metrics[k.i]) AS metrics, array_agg(s.variants[k.i]) AS variants
  FROM runner_stat_series s, generate_subscripts(s.metrics, 1) AS k(i)
  WHERE s.cluster_id = ANY($1::text[]) AND ($2::text[] IS NULL OR s.runner_id = ANY($2::text[]))
    AND s.metrics[k.i] = ANY($3::text[])
  GROUP BY s.id, s.runner_id
), v AS (
  -- Each stored row read once (OFFSET 0 keeps the LATERAL a per-series index scan), its
  -- requested values taken out by position.
  SELECT p.runner_id, k.metric, k.variant, r.ts, 1 AS n, r.vals[k.i] AS a, r.vals[k.i] AS mn, r.vals[k.i] AS mx, r.vals[k.i] AS l
  FROM sel p, LATERAL (SELECT ts, vals FROM runner_stats_raw WHERE series_id = p.series_id AND ts >= $6 AND ts < $7 OFFSET 0) r,
    unnest(p.idx, p.metrics, p.variants) AS k(i, metric, variant)
  UNION ALL
  SELECT p.runner_id, k.metric, k.variant, r.ts, r.n, r.avg[k.i], r.min[k.i], r.max[k.i], r.last[k.i]
  FROM sel p, LATERAL (SELECT ts, n, avg, min, max, last FROM runner_stats_1m WHERE series_id = p.series_id AND ts >= $8 AND ts < $9 OFFSET 0) r,
    unnest(p.idx, p.metrics, p.variants) AS k(i, metric, variant)
  UNION ALL
  SELECT p.runner_id, k.metric, k.variant, r.ts, r.n, r.avg[k.i], r.min[k.i], r.max[k.i], r.last[k.i]
  FROM sel p, LATERAL (SELECT ts, n, avg, min, max, last FROM runner_stats_1h WHERE series_id = p.series_id AND ts >= $10 AND ts < $11 OFFSET 0) r,
    unnest(p.idx, p.metrics, p.variants) AS k(i, metric, variant)
), b AS (
  SELECT runner_id, metric, CASE WHEN $4::boolean THEN variant ELSE '' END AS variant,
    (floor(extract(epoch FROM ts) / $5::int) * $5::int)::float8 AS d,
    (sum(a * n) / sum(n))::float8 AS avg, min(mn)::float8 AS min, max(mx)::float8 AS max, sum(n)::float8 AS count,
    -- The last value: the one of the latest instant (an ordered aggregate would sort every row).
    (max(ARRAY[extract(epoch FROM ts)::float8, l::float8]))[2] AS last
  FROM v
  GROUP BY 1, 2, 3, 4
)
-- One row per runner, metric (and variant): its buckets in time order as one JSON array of
-- [date, avg, min, max, last, count], parsed in one go by the caller (a row per bucket
-- costs more to decode than the database takes to compute it).
SELECT runner_id, metric, variant, array_to_json(array_agg(ARRAY[d, avg, min, max, last, count] ORDER BY d))::text AS buckets
FROM b
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
