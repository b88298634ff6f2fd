-- Rolls raw samples of [from, to) up into minutes (leader work, series/rollup.ts): per series
-- and minute the samples counted, the most busy slots, and per value its mean, least,
-- greatest and last. Idempotent: a minute rolled again is replaced whole.
--
-- Parameters:
--   $1 from  timestamptz (a whole minute)
--   $2 to    timestamptz (a whole minute)
WITH src AS (
  SELECT series_id, date_trunc('minute', ts) AS b, ts, busy, vals
  FROM runner_stats_raw WHERE ts >= $1 AND ts < $2
), heads AS (
  SELECT series_id, b, count(*)::int AS n, max(busy) AS busy FROM src GROUP BY series_id, b
), lasts AS (
  SELECT DISTINCT ON (series_id, b) series_id, b, vals FROM src ORDER BY series_id, b, ts DESC
), elems AS (
  SELECT src.series_id, src.b, e.i, avg(e.v)::real AS a, min(e.v) AS mn, max(e.v) AS mx
  FROM src, unnest(src.vals) WITH ORDINALITY AS e(v, i)
  GROUP BY src.series_id, src.b, e.i
), arrs AS (
  SELECT series_id, b, array_agg(a ORDER BY i) AS avg, array_agg(mn ORDER BY i) AS min, array_agg(mx ORDER BY i) AS max
  FROM elems GROUP BY series_id, b
)
INSERT INTO runner_stats_1m (series_id, ts, n, busy, avg, min, max, last)
SELECT h.series_id, h.b, h.n, h.busy, a.avg, a.min, a.max, l.vals
FROM heads h JOIN arrs a USING (series_id, b) JOIN lasts l USING (series_id, b)
ON CONFLICT (series_id, ts) DO UPDATE SET n = excluded.n, busy = excluded.busy, avg = excluded.avg,
  min = excluded.min, max = excluded.max, last = excluded.last
