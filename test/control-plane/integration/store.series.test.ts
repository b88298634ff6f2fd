/**
 * The read behind workers.get_stats (store/sql/stats-read.sql) on both engines, against
 * values computed by hand: raw samples and a minute roll-up of two runners, one of them with
 * two layouts (a disk added), read over ranges that span both tables; avg (weighted by the
 * samples each row stands for), min, max, count and last (the latest instant's value), per
 * variant when split and across variants when not, only the requested metrics, only the
 * requested runners and clusters.
 */
import t from 'tap';
import { ManualClock } from '../../../lib/clock.ts';
import type { StatSeries } from '../../../control-plane/store/series.ts';
import { ENGINES, freshStore } from '../../helpers/db.ts';

const T0 = Date.UTC(2026, 11, 1, 10, 0, 0);
const at = (s: number) => new Date(T0 + s * 1000);
const none = [at(0), at(0)] as const;

for (const engine of ENGINES) {
  t.test(`stats read on ${engine}`, async (t) => {
    const store = await freshStore(t, engine, new ManualClock(T0));
    const layout = (runnerId: string, md5: string, metrics: string[], variants: string[], clusterId = 'c1') => store.series.resolve({ runnerId, clusterId, md5, metrics, variants });
    // r1: cpu per core (two variants) and memory; from 10:02 a disk too (a second layout).
    const a1 = await layout('r1', 'a', ['cpu', 'cpu', 'mem'], ['0', '1', '']);
    const b1 = await layout('r1', 'b', ['cpu', 'cpu', 'mem', 'disk'], ['0', '1', '', '/']);
    const r2 = await layout('r2', 'a', ['mem', 'cpu'], ['', '0']);
    const elsewhere = await layout('r3', 'a', ['mem'], [''], 'c2');
    // Minute 10:00 rolled up (r1: 6 samples; r2: 3), raw samples after it.
    const minute = (series: number, ts: Date, n: number, avg: number[], min: number[], max: number[], last: number[]) =>
      store.db.query(`INSERT INTO runner_stats_1m (series_id, ts, n, busy, avg, min, max, last) VALUES ($1, $2, $3, 0, $4, $5, $6, $7)`, [series, ts, n, avg, min, max, last]);
    await minute(a1, at(0), 6, [10, 20, 100], [5, 15, 90], [15, 25, 110], [12, 22, 105]);
    await minute(r2, at(0), 3, [300, 7], [290, 6], [310, 8], [305, 7.5]);
    await minute(elsewhere, at(0), 1, [999], [999], [999], [999]);
    await store.series.insert([
      { seriesId: a1, ts: at(60), busy: 0, values: [30, 40, 120] },
      { seriesId: a1, ts: at(70), busy: 0, values: [50, 60, 130] },
      { seriesId: b1, ts: at(120), busy: 1, values: [1, 2, 140, 55] },
      { seriesId: b1, ts: at(130), busy: 1, values: [3, 4, 150, 56] },
      { seriesId: r2, ts: at(60), busy: 0, values: [320, 9] },
    ]);
    const ranges = { raw: [at(60), at(180)] as const, m: [at(0), at(60)] as const, h: none };
    /** The read's buckets, a row each: runner, metric, variant, seconds after 10:00, avg, min, max, last, count. */
    const read = async (o: { keys: string[]; split?: boolean; intervalS: number; runnerIds?: string[]; clusterIds?: string[] }) =>
      (await store.series.read({ clusterIds: o.clusterIds ?? ['c1'], runnerIds: o.runnerIds, keys: o.keys, split: o.split ?? false, intervalS: o.intervalS, ranges })).flatMap((s: StatSeries) =>
        s.dates.map((d, i) => [s.runnerId, s.metric, s.variant, d - T0 / 1000, s.avg[i], s.min[i], s.max[i], s.last[i], s.count[i]]),
      );

    t.test('by the minute: the roll-up for 10:00, raw samples after it, each layout', async (t) => {
      t.same(await read({ keys: ['mem'], intervalS: 60 }), [
        ['r1', 'mem', '', 0, 100, 90, 110, 105, 6],
        ['r1', 'mem', '', 60, 125, 120, 130, 130, 2],
        ['r1', 'mem', '', 120, 145, 140, 150, 150, 2],
        ['r2', 'mem', '', 0, 300, 290, 310, 305, 3],
        ['r2', 'mem', '', 60, 320, 320, 320, 320, 1],
      ]);
    });

    t.test('three minutes in one bucket: avg weighted by samples, the last value of the latest instant', async (t) => {
      const rows = await read({ keys: ['mem', 'disk'], intervalS: 180 });
      // r1 mem: (100*6 + 120 + 130 + 140 + 150) / 10 = 114.
      t.same(rows, [
        ['r1', 'disk', '', 0, 55.5, 55, 56, 56, 2],
        ['r1', 'mem', '', 0, 114, 90, 150, 150, 10],
        ['r2', 'mem', '', 0, 305, 290, 320, 320, 4],
      ]);
    });

    t.test('split by variant, and across variants when not', async (t) => {
      const split = await read({ keys: ['cpu'], intervalS: 180, split: true, runnerIds: ['r1'] });
      // core 0: (10*6 + 30 + 50 + 1 + 3) / 10 = 14.4; core 1: (20*6 + 40 + 60 + 2 + 4) / 10 = 22.6.
      t.same(split, [
        ['r1', 'cpu', '0', 0, 14.4, 1, 50, 3, 10],
        ['r1', 'cpu', '1', 0, 22.6, 2, 60, 4, 10],
      ]);
      const whole = await read({ keys: ['cpu'], intervalS: 60, runnerIds: ['r1'] });
      t.same(whole.map((r) => r.slice(0, 4).concat(r.slice(4, 7), r.slice(8))), [
        ['r1', 'cpu', '', 0, 15, 5, 25, 12],
        ['r1', 'cpu', '', 60, 45, 30, 60, 4],
        ['r1', 'cpu', '', 120, 2.5, 1, 4, 4],
      ], 'both cores together: avg, min, max, count');
      t.ok([3, 4].includes(whole[2]![7] as number), 'and last: a value of the latest instant');
    });

    t.test('only what was asked', async (t) => {
      t.same(await read({ keys: ['nothing'], intervalS: 60 }), [], 'an unknown metric');
      t.same((await read({ keys: ['mem'], intervalS: 180, runnerIds: ['r2'] })).map((b) => b[0]), ['r2'], 'one runner');
      t.same(await read({ keys: ['mem'], intervalS: 180, clusterIds: ['c2'] }), [['r3', 'mem', '', 0, 999, 999, 999, 999, 1]], 'another cluster');
      t.same(await read({ keys: ['mem'], intervalS: 180, clusterIds: [] }), [], 'no cluster');
    });
  });
}
