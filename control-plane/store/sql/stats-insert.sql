-- A flush of recorded machine stats (series/recorder.ts): every sample buffered on this
-- replica since the last flush, in one statement whatever their number. A sample whose
-- window a sample of the same series already holds (the runner moved replicas within one
-- window) is dropped: at most one sample per runner per window.
--
-- Parameters:
--   $1 series  int[]
--   $2 ts      timestamptz[] (each window's start)
--   $3 busy    int2[]
--   $4 vals    text[] (each a real[] literal, '{1,2.5,...}')
INSERT INTO runner_stats_raw (series_id, ts, busy, vals)
SELECT u.s, u.t, u.b, u.v::real[]
FROM unnest($1::int[], $2::timestamptz[], $3::int2[], $4::text[]) AS u(s, t, b, v)
ON CONFLICT (series_id, ts) DO NOTHING
