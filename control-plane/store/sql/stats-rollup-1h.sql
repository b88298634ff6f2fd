-- Rolls minutes of [from, to) up into hours (leader work, series/rollup.ts): means weighted
-- by the samples each minute counted. Idempotent: an hour rolled again is replaced whole.
--
-- Parameters:
--   $1 from  timestamptz (a whole hour)
--   $2 to    timestamptz (a whole hour)
WITH src AS (
  SELECT series_id, date_trunc('hour', ts) AS b, ts, n, busy, avg, min, max, last
  FROM runner_stats_1m WHERE ts >= $1 AND ts < $2
), heads AS (
  SELECT series_id, b, sum(n)::int AS n, max(busy) AS busy FROM src GROUP BY series_id, b
), lasts AS (
  SELECT DISTINCT ON (series_id, b) series_id, b, last FROM src ORDER BY series_id, b, ts DESC
), elems AS (
  SELECT src.series_id, src.b, e.i, (sum(e.a * src.n) / sum(src.n))::real AS a, min(e.mn) AS mn, max(e.mx) AS mx
  FROM src, unnest(src.avg, src.min, src.max) WITH ORDINALITY AS e(a, mn, mx, i)
  GROUP BY src.series_id, src.b, e.i
), arrs AS (
  SELECT series_id, b, array_agg(a ORDER BY i) AS avg, array_agg(mn ORDER BY i) AS min, array_agg(mx ORDER BY i) AS max
  FROM elems GROUP BY series_id, b
)
INSERT INTO runner_stats_1h (series_id, ts, n, busy, avg, min, max, last)
SELECT h.series_id, h.b, h.n, h.busy, a.avg, a.min, a.max, l.last
FROM heads h JOIN arrs a USING (series_id, b) JOIN lasts l USING (series_id, b)
ON CONFLICT (series_id, ts) DO UPDATE SET n = excluded.n, busy = excluded.busy, avg = excluded.avg,
  min = excluded.min, max = excluded.max, last = excluded.last
