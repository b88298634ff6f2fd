import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';
import { checkFence, type Fence } from './fence.ts';
import type { BatchResult } from './retention.ts';
import { run, statement } from './statements.ts';

const INSERT = statement('stats-insert');
const ROLLUP_1M = statement('stats-rollup-1m');
const ROLLUP_1H = statement('stats-rollup-1h');
const READ = statement('stats-read');
const ACTIVITY = statement('stats-activity');

/** The tables of recorded machine stats, finest first (migration 015). */
export const STAT_TABLES = { raw: 'runner_stats_raw', '1m': 'runner_stats_1m', '1h': 'runner_stats_1h' } as const;
export type StatLevel = keyof typeof STAT_TABLES;

/** A runner's layout: the (metric, variant) pairs its samples carry, in order. */
export interface SeriesLayout {
  runnerId: string;
  clusterId: string;
  /** md5 of the layout (series/machine-stats.ts). */
  md5: string;
  metrics: string[];
  variants: string[];
}

/** One raw sample: the values in its series' order. */
export interface Sample {
  seriesId: number;
  /** The start of its GANTRY_STATS_INTERVAL_S window. */
  ts: Date;
  busy: number;
  values: number[];
}

/** A half-open time range [from, to); from >= to reads nothing. */
export type Range = readonly [Date, Date];
/** Which part of a question each table answers (series/read-plan.ts picks them). */
export interface Ranges {
  raw: Range;
  m: Range;
  h: Range;
}

/** The buckets of one metric (and variant, when split) of one runner, oldest first, column by column. */
export interface StatSeries {
  runnerId: string;
  metric: string;
  /** '' when not split by variant. */
  variant: string;
  /** Each bucket's start, seconds since the epoch. */
  dates: number[];
  avg: number[];
  min: number[];
  max: number[];
  last: number[];
  count: number[];
}

export interface ActivityBucket {
  date: number;
  total: number;
  active: number;
}

/** How far the roll-ups have got: every bucket before each is rolled up (null: never ran). */
export interface Watermarks {
  m: Date | null;
  h: Date | null;
}

/** A real[] literal of finite values (PostgreSQL's real has no room for what JSON lacks). */
function realArray(values: readonly number[]): string {
  return `{${values.map((v) => (Number.isFinite(v) ? String(Math.fround(v)) : '0')).join(',')}}`;
}

/** Recorded machine stats: series layouts, raw samples, their roll-ups and the reads of the workers API. */
export class SeriesStore {
  constructor(private readonly c: StoreCtx) {}

  /**
   * The series id of a runner's layout, made on first use (a layout changes rarely: a disk,
   * an interface), and marked resolved now: retention leaves it alone for a while (see
   * deleteUnused).
   */
  async resolve(l: SeriesLayout): Promise<number> {
    const r = await this.c.db.query<{ id: number }>(
      `INSERT INTO runner_stat_series (runner_id, cluster_id, layout_md5, metrics, variants, created_at, resolved_at)
       VALUES ($1, $2, $3, $4, $5, $6, $6)
       ON CONFLICT (runner_id, layout_md5) DO UPDATE SET cluster_id = excluded.cluster_id, resolved_at = excluded.resolved_at
       RETURNING id`,
      [l.runnerId, l.clusterId, l.md5, l.metrics, l.variants, this.c.clock.now()],
    );
    return Number(r.rows[0]!.id);
  }

  /** Writes a flush of samples in one statement; returns how many were new. */
  async insert(samples: readonly Sample[]): Promise<number> {
    if (samples.length === 0) return 0;
    const r = await run(this.c.db, INSERT, [
      samples.map((s) => s.seriesId),
      samples.map((s) => s.ts),
      samples.map((s) => Math.max(0, Math.min(32767, Math.round(s.busy)))),
      samples.map((s) => realArray(s.values)),
    ]);
    return r.rowCount;
  }

  /** How many runners of these clusters have recorded series (what a read of all of them spans). */
  async runnerCount(clusterIds: string[]): Promise<number> {
    const r = await this.c.db.query<{ n: number }>('SELECT count(DISTINCT runner_id)::int AS n FROM runner_stat_series WHERE cluster_id = ANY($1::text[])', [clusterIds]);
    return r.rows[0]?.n ?? 0;
  }

  async watermarks(q: Queryable = this.c.db): Promise<Watermarks> {
    const r = await q.query<{ level: '1m' | '1h'; done_through: Date }>('SELECT level, done_through FROM runner_stats_rollup');
    const at = (l: string) => r.rows.find((x) => x.level === l)?.done_through ?? null;
    return { m: at('1m'), h: at('1h') };
  }

  /** The oldest raw sample, where a roll-up that never ran starts (a scan, once per installation). */
  async oldestRaw(): Promise<Date | null> {
    const r = await this.c.db.query<{ t: Date | null }>('SELECT min(ts) AS t FROM runner_stats_raw');
    return r.rows[0]?.t ?? null;
  }

  async oldestMinute(): Promise<Date | null> {
    const r = await this.c.db.query<{ t: Date | null }>('SELECT min(ts) AS t FROM runner_stats_1m');
    return r.rows[0]?.t ?? null;
  }

  /**
   * Rolls [from, to) of one level up (raw into minutes for '1m', minutes into hours for
   * '1h') and moves its watermark to `to`, in one fenced transaction: a deposed leader's
   * roll-up changes nothing, and one that stopped halfway is done again whole.
   */
  async rollUp(level: '1m' | '1h', from: Date, to: Date, fence?: Fence): Promise<number> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const r = await run(q, level === '1m' ? ROLLUP_1M : ROLLUP_1H, [from, to]);
      await q.query(
        `INSERT INTO runner_stats_rollup (level, done_through) VALUES ($1, $2)
         ON CONFLICT (level) DO UPDATE SET done_through = greatest(runner_stats_rollup.done_through, excluded.done_through)`,
        [level, to],
      );
      return r.rowCount;
    });
  }

  /** workers.get_stats: the buckets of the requested metrics of the runners of these clusters. */
  async read(o: { clusterIds: string[]; runnerIds?: string[]; keys: string[]; split: boolean; intervalS: number; ranges: Ranges }): Promise<StatSeries[]> {
    const { raw, m, h } = o.ranges;
    const r = await run<{ runner_id: string; metric: string; variant: string; buckets: string }>(
      this.c.db,
      READ,
      [o.clusterIds, o.runnerIds?.length ? o.runnerIds : null, o.keys, o.split, o.intervalS, raw[0], raw[1], m[0], m[1], h[0], h[1]],
    );
    return r.rows.map((x) => {
      const rows = JSON.parse(x.buckets) as number[][];
      const col = (i: number) => rows.map((b) => b[i]!);
      return { runnerId: x.runner_id, metric: x.metric, variant: x.variant, dates: col(0), avg: col(1), min: col(2), max: col(3), last: col(4), count: col(5) };
    });
  }

  /** workers.get_activity_report: runners reporting, and those with a busy slot, per bucket. */
  async activity(o: { clusterIds: string[]; intervalS: number; ranges: Ranges }): Promise<ActivityBucket[]> {
    const { raw, m, h } = o.ranges;
    const r = await run<{ d: string; total: number; active: number }>(this.c.db, ACTIVITY, [o.clusterIds, o.intervalS, raw[0], raw[1], m[0], m[1], h[0], h[1]]);
    return r.rows.map((x) => ({ date: Number(x.d), total: Number(x.total), active: Number(x.active) }));
  }

  /** workers.get_metric_keys: the metric names recorded for these runners (or every runner of the clusters). */
  async metricKeys(clusterIds: string[], runnerIds?: string[]): Promise<string[]> {
    const r = await this.c.db.query<{ metric: string }>(
      `SELECT DISTINCT unnest(metrics) AS metric FROM runner_stat_series
       WHERE cluster_id = ANY($1::text[]) AND ($2::text[] IS NULL OR runner_id = ANY($2::text[]))`,
      [clusterIds, runnerIds?.length ? runnerIds : null],
    );
    return r.rows.map((x) => x.metric);
  }

  /** Which of `ids` are workers of these clusters: registered now, or with recorded stats there. */
  async known(clusterIds: string[], ids: string[]): Promise<Set<string>> {
    const r = await this.c.db.query<{ id: string }>(
      `SELECT id FROM runners WHERE cluster_id = ANY($1::text[]) AND id = ANY($2::text[])
       UNION SELECT runner_id FROM runner_stat_series WHERE cluster_id = ANY($1::text[]) AND runner_id = ANY($2::text[])`,
      [clusterIds, ids],
    );
    return new Set(r.rows.map((x) => x.id));
  }

  /**
   * Retention: deletes at most `limit` rows of one level older than `cutoff`, fenced. The
   * rows are found through the BRIN index on ts, in no order (ordering a day of a fleet's
   * samples would sort millions of rows per batch).
   */
  async deleteExpired(level: StatLevel, cutoff: Date, limit: number, fence?: Fence): Promise<BatchResult> {
    const table = STAT_TABLES[level];
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const r = await q.query(
        `DELETE FROM ${table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM ${table} WHERE ts < $1 LIMIT $2 FOR UPDATE SKIP LOCKED))`,
        [cutoff, limit],
      );
      const kind = `stats_${level}`;
      return { deleted: { [kind]: r.rowCount }, statements: r.rowCount > 0 ? 1 : 0, maxRows: r.rowCount };
    });
  }

  /**
   * Retention: deletes at most `limit` series none of whose samples is left at any level and
   * that no recorder has resolved since `cutoff`, fenced. A recorder resolving one of them at
   * the same moment either updates it first (the row is locked: it is skipped, and the
   * delete's own check of resolved_at sees the new value) or waits for the delete and makes
   * it anew: it never writes samples into a series that is gone.
   */
  async deleteUnused(cutoff: Date, limit: number, fence?: Fence): Promise<BatchResult> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const unused = Object.values(STAT_TABLES)
        .map((table) => `NOT EXISTS (SELECT 1 FROM ${table} x WHERE x.series_id = s.id)`)
        .join(' AND ');
      const r = await q.query(
        `DELETE FROM runner_stat_series WHERE resolved_at < $1 AND id = ANY(ARRAY(
           SELECT s.id FROM runner_stat_series s WHERE s.resolved_at < $1 AND ${unused}
           LIMIT $2 FOR UPDATE SKIP LOCKED))`,
        [cutoff, limit],
      );
      return { deleted: { stats_series: r.rowCount }, statements: r.rowCount > 0 ? 1 : 0, maxRows: r.rowCount };
    });
  }
}
