import type { StoreCtx, Page } from './ctx.ts';
import type { Queryable } from './db.ts';
import { checkFence, type Fence } from './fence.ts';

/**
 * The queue as data: what the leader records every interval (scheduler/queue-load.ts) and
 * what the queue services API reads (GET .../load, GET .../queue/status). Migration 016
 * says what each table holds. Recording is one fenced transaction per instant: its tick row
 * is inserted first and only if absent, so two leaders (one stale, or one after a failover
 * within the same interval) never write two sets of rows for one instant.
 */

const HOUR_MS = 3_600_000;

/** What one recording pass wrote. */
export interface RecordResult {
  /** False when the instant had been recorded already (by this leader or another). */
  recorded: boolean;
  /** Series rows (project, code package, priority) and cluster rows written. */
  series: number;
  clusters: number;
}

/** Filters of the load series; each list matches any of its values, lists combine with AND. */
export interface LoadFilter {
  codeIds?: string[];
  codeNames?: string[];
  categories?: string[];
  priorities?: number[];
}

/** One point of a project's load: when it was recorded and the tasks in each state then. */
export interface LoadPoint {
  time: Date;
  pending: number;
  queued: number;
  running: number;
}

/** One code package revision with queued tasks (GET .../queue/status). */
export interface QueueStatusEntry {
  codeId: string;
  codeName: string;
  rev: number;
  category: string | null;
  count: number;
  /** When the task that has waited longest became eligible. */
  longestQueued: Date;
  highestPriority: number;
  paused: boolean;
}

/** One cluster's recorded demand and fleet at an instant. */
export interface ClusterLoadPoint {
  cluster: string;
  at: Date;
  busy: number;
  queued: number;
  runners: number;
  slots: number;
  instances: { add: number; live: number; kill: number };
  /** The autoscaler's fast EWMA of demand then; null before it had any. */
  ewma: number | null;
}

interface ClusterLoadRow {
  cluster: string;
  at: Date;
  busy: number;
  queued: number;
  runners: number;
  slots: number;
  instances_add: number;
  instances_live: number;
  instances_kill: number;
  ewma: number | null;
}

function toClusterLoad(r: ClusterLoadRow): ClusterLoadPoint {
  return {
    cluster: r.cluster,
    at: r.at,
    busy: r.busy,
    queued: r.queued,
    runners: r.runners,
    slots: r.slots,
    instances: { add: r.instances_add, live: r.instances_live, kill: r.instances_kill },
    ewma: r.ewma === null ? null : Number(r.ewma),
  };
}

/**
 * Tasks per project, code package and priority, read in one statement (one snapshot):
 * queued tasks through the queue's partial index, leased ones through the live leases'
 * (bounded by the fleet's slots). A task offered to a runner is running (it holds a lease).
 */
const RECORD_SERIES = `
INSERT INTO queue_load (project_id, at, code_id, priority, pending, queued, running)
SELECT project_id, $1, code_id, priority, sum(pending)::int, sum(queued)::int, sum(running)::int FROM (
  SELECT project_id, code_id, priority,
    count(*) FILTER (WHERE eligible_at > $2) AS pending, count(*) FILTER (WHERE eligible_at <= $2) AS queued, 0 AS running
  FROM tasks WHERE status = 'queued' AND lease_id IS NULL GROUP BY project_id, code_id, priority
  UNION ALL
  SELECT t.project_id, t.code_id, t.priority, 0, 0, count(*)
  FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE l.ended_at IS NULL GROUP BY t.project_id, t.code_id, t.priority
) s GROUP BY project_id, code_id, priority`;

/**
 * Per cluster, what the autoscaler's snapshot reads (store/autoscale.ts): busy leases,
 * tasks that could be leased now (eligible, not leased, package not paused and below its
 * max_concurrency), connected runners and their slots (draining runners' not counted, as
 * the gauges count them), instances by state, and the autoscaler's EWMA of demand.
 */
const RECORD_CLUSTERS = `
WITH live AS (SELECT code_id, count(*) AS n FROM task_leases WHERE ended_at IS NULL GROUP BY code_id)
INSERT INTO cluster_load (cluster, at, busy, queued, runners, slots, instances_add, instances_live, instances_kill, ewma)
SELECT cluster, $1, sum(busy)::int, sum(queued)::int, sum(runners)::int, sum(slots)::int, sum(i_add)::int, sum(i_live)::int, sum(i_kill)::int, max(ewma)
FROM (
  SELECT cluster, count(*) AS busy, 0 AS queued, 0 AS runners, 0 AS slots, 0 AS i_add, 0 AS i_live, 0 AS i_kill, NULL::float8 AS ewma
  FROM task_leases WHERE ended_at IS NULL AND state IN ('accepted', 'running') GROUP BY cluster
  UNION ALL
  SELECT t.cluster, 0, count(*), 0, 0, 0, 0, 0, NULL
  FROM tasks t JOIN codes c ON c.id = t.code_id AND NOT c.paused JOIN code_revisions r ON r.id = c.latest_revision_id
    LEFT JOIN live ON live.code_id = t.code_id
  WHERE t.status = 'queued' AND t.lease_id IS NULL AND t.eligible_at <= $2
    AND (r.max_concurrency IS NULL OR r.max_concurrency > coalesce(live.n, 0))
  GROUP BY t.cluster
  UNION ALL
  SELECT c.name, 0, 0, count(*), coalesce(sum(r.slots) FILTER (WHERE NOT r.draining), 0), 0, 0, 0, NULL
  FROM runners r JOIN clusters c ON c.id = r.cluster_id WHERE r.connected AND r.last_beat_at > $3 GROUP BY c.name
  UNION ALL
  SELECT c.name, 0, 0, 0, 0, count(*) FILTER (WHERE i.type = 'ADD'), count(*) FILTER (WHERE i.type = 'LIVE'),
    count(*) FILTER (WHERE i.type = 'KILL'), NULL
  FROM cluster_instances i JOIN clusters c ON c.id = i.cluster_id WHERE i.type <> 'TERMINATE' GROUP BY c.name
  UNION ALL
  SELECT c.name, 0, 0, 0, 0, 0, 0, 0, a.ewma
  FROM autoscaler_state a JOIN clusters c ON c.id = a.cluster_id AND c.deleted_at IS NULL
) s GROUP BY cluster`;

/** The WHERE conditions of a load filter over queue_load (or its roll-up) `q`, codes `c`, revisions `r`. */
function filterSql(f: LoadFilter, params: unknown[]): { where: string[]; joins: string } {
  const where: string[] = [];
  if (f.codeIds?.length) where.push(`q.code_id = ANY($${params.push(f.codeIds)}::text[])`);
  if (f.priorities?.length) where.push(`q.priority = ANY($${params.push(f.priorities)}::smallint[])`);
  if (f.codeNames?.length) where.push(`c.name = ANY($${params.push(f.codeNames)}::text[])`);
  if (f.categories?.length) where.push(`r.category = ANY($${params.push(f.categories)}::text[])`);
  const joins = f.codeNames?.length || f.categories?.length ? 'JOIN codes c ON c.id = q.code_id JOIN code_revisions r ON r.id = c.latest_revision_id' : '';
  return { where, joins };
}

export class QueueLoadStore {
  constructor(private readonly c: StoreCtx) {}

  /**
   * Records instant `at` with the counts as they are now: its tick, a row per series with a
   * task, a row per cluster with anything to say. Fenced; nothing is written when `at` was
   * recorded already. `aliveMs`: a runner marked connected counts if it beat within this.
   */
  async record(at: Date, aliveMs: number, fence?: Fence): Promise<RecordResult> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const tick = await q.query('INSERT INTO queue_load_ticks (at, recorded_at) VALUES ($1, $2) ON CONFLICT (at) DO NOTHING RETURNING at', [at, now]);
      if (tick.rows.length === 0) return { recorded: false, series: 0, clusters: 0 };
      const series = await q.query(RECORD_SERIES, [at, now]);
      const clusters = await q.query(RECORD_CLUSTERS, [at, now, new Date(now.getTime() - aliveMs)]);
      return { recorded: true, series: series.rowCount, clusters: clusters.rowCount };
    });
  }

  /**
   * Rolls up every hour that ended by `before` and is not rolled up yet, at most `maxHours`
   * of them (oldest first), each once: its passes counted into queue_load_hours (the key
   * that makes a second roll-up of the hour write nothing) and each series' mean and most.
   * Fenced. Returns the hours rolled up.
   */
  async rollUp(before: Date, maxHours: number, fence?: Fence): Promise<number> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const last = (await q.query<{ hour: Date | null }>('SELECT max(hour) AS hour FROM queue_load_hours')).rows[0]!.hour;
      const end = Math.floor(before.getTime() / HOUR_MS) * HOUR_MS;
      const from = last ? last.getTime() + HOUR_MS : 0;
      const hours = (
        await q.query<{ at: Date }>(
          `SELECT min(at) AS at FROM queue_load_ticks WHERE at >= $1 AND at < $2
           GROUP BY floor(extract(epoch FROM at) / 3600) ORDER BY 1 LIMIT $3`,
          [new Date(from), new Date(end), maxHours],
        )
      ).rows.map((r) => Math.floor(r.at.getTime() / HOUR_MS) * HOUR_MS);
      for (const h of hours) await this.rollUpHour(q, new Date(h), new Date(h + HOUR_MS));
      return hours.length;
    });
  }

  private async rollUpHour(q: Queryable, hour: Date, next: Date): Promise<void> {
    const r = await q.query<{ ticks: number }>(
      `INSERT INTO queue_load_hours (hour, ticks) SELECT $1, count(*)::int FROM queue_load_ticks WHERE at >= $1 AND at < $2
       ON CONFLICT (hour) DO NOTHING RETURNING ticks`,
      [hour, next],
    );
    const ticks = r.rows[0]?.ticks;
    if (!ticks) return;
    await q.query(
      `INSERT INTO queue_load_hourly (project_id, hour, code_id, priority, pending_mean, queued_mean, running_mean, pending_max, queued_max, running_max)
       SELECT project_id, $1, code_id, priority, sum(pending)::real / $3, sum(queued)::real / $3, sum(running)::real / $3,
         max(pending), max(queued), max(running)
       FROM queue_load WHERE at >= $1 AND at < $2 GROUP BY project_id, code_id, priority`,
      [hour, next, ticks],
    );
    await q.query(
      `INSERT INTO cluster_load_hourly (cluster, hour, busy_mean, queued_mean, slots_mean, busy_max, queued_max, runners_max, slots_max)
       SELECT cluster, $1, sum(busy)::real / $3, sum(queued)::real / $3, sum(slots)::real / $3, max(busy), max(queued), max(runners), max(slots)
       FROM cluster_load WHERE at >= $1 AND at < $2 GROUP BY cluster`,
      [hour, next, ticks],
    );
  }

  /**
   * A project's load from `from` to `to` (inclusive), one point per recorded instant (an
   * instant without rows counts 0: the queue was empty), oldest first, a page of them, and
   * how many there are. `hourly`: one point per rolled-up hour, each count the hour's mean
   * rounded.
   */
  async load(projectId: string, f: LoadFilter, from: Date, to: Date, p: Page, hourly: boolean): Promise<{ count: number; points: LoadPoint[] }> {
    const params: unknown[] = [projectId, from, to];
    const { where, joins } = filterSql(f, params);
    const limit = params.push(p.perPage);
    const offset = params.push(p.page * p.perPage);
    const cond = where.map((w) => ` AND ${w}`).join('');
    // The page's instants first, then the series of only those: a page costs its own rows,
    // wherever it is in the range.
    const [ticks, at, time, series, t] = hourly
      ? ['queue_load_hours', 'hour', 'hour', 'queue_load_hourly', { p: 'round(sum(q.pending_mean))', q: 'round(sum(q.queued_mean))', r: 'round(sum(q.running_mean))' }]
      : ['queue_load_ticks', 'at', 'recorded_at', 'queue_load', { p: 'sum(q.pending)', q: 'sum(q.queued)', r: 'sum(q.running)' }];
    const sql = `WITH page AS (SELECT ${at} AS at, ${time} AS time FROM ${ticks} WHERE ${at} >= $2 AND ${at} <= $3 ORDER BY ${at} LIMIT $${limit} OFFSET $${offset})
      SELECT p.time, coalesce(s.pending, 0)::int AS pending, coalesce(s.queued, 0)::int AS queued, coalesce(s.running, 0)::int AS running
      FROM page p LEFT JOIN (
        SELECT q.${at} AS at, ${t.p} AS pending, ${t.q} AS queued, ${t.r} AS running
        FROM ${series} q ${joins}
        WHERE q.project_id = $1 AND q.${at} >= (SELECT min(at) FROM page) AND q.${at} <= (SELECT max(at) FROM page)${cond}
        GROUP BY q.${at}
      ) s ON s.at = p.at ORDER BY p.at`;
    const [rows, count] = await Promise.all([
      this.c.db.query<LoadPoint>(sql, params),
      this.c.db.query<{ n: number }>(
        hourly
          ? 'SELECT count(*)::int AS n FROM queue_load_hours WHERE hour >= $1 AND hour <= $2'
          : 'SELECT count(*)::int AS n FROM queue_load_ticks WHERE at >= $1 AND at <= $2',
        [from, to],
      ),
    ]);
    return { count: Number(count.rows[0]!.n), points: rows.rows };
  }

  /** A page of a cluster's recorded demand and fleet from `from` to `to` (inclusive), oldest first, and how many instants there are. */
  async clusterLoad(cluster: string, from: Date, to: Date, p: Page = { page: 0, perPage: 1000 }): Promise<{ count: number; points: ClusterLoadPoint[] }> {
    const [rows, count] = await Promise.all([
      this.c.db.query<ClusterLoadRow>('SELECT * FROM cluster_load WHERE cluster = $1 AND at >= $2 AND at <= $3 ORDER BY at LIMIT $4 OFFSET $5', [
        cluster,
        from,
        to,
        p.perPage,
        p.page * p.perPage,
      ]),
      this.c.db.query<{ n: number }>('SELECT count(*)::int AS n FROM cluster_load WHERE cluster = $1 AND at >= $2 AND at <= $3', [cluster, from, to]),
    ]);
    return { count: Number(count.rows[0]!.n), points: rows.rows.map(toClusterLoad) };
  }

  /**
   * The project's queue now, by code package revision: tasks eligible and waiting (not
   * delayed, not leased), when the longest-waiting became eligible, their highest priority,
   * and whether the package is paused. Read through the project's queued-task index.
   */
  async status(projectId: string): Promise<QueueStatusEntry[]> {
    const r = await this.c.db.query<{
      code_id: string; code_name: string; code_rev: number; category: string | null; count: number; longest: Date; highest: number; paused: boolean;
    }>(
      `SELECT t.code_id, t.code_name, t.code_rev, rv.category, count(*)::int AS count, min(t.eligible_at) AS longest,
         max(t.priority)::int AS highest, c.paused
       FROM tasks t JOIN codes c ON c.id = t.code_id JOIN code_revisions rv ON rv.id = t.code_revision_id
       WHERE t.project_id = $1 AND t.status = 'queued' AND t.project_id > '' AND t.lease_id IS NULL AND t.eligible_at <= $2
       GROUP BY t.code_id, t.code_name, t.code_rev, rv.category, c.paused ORDER BY t.code_name, t.code_rev`,
      [projectId, this.c.clock.now()],
    );
    return r.rows.map((x) => ({
      codeId: x.code_id,
      codeName: x.code_name,
      rev: x.code_rev,
      category: x.category,
      count: x.count,
      longestQueued: x.longest,
      highestPriority: x.highest,
      paused: x.paused,
    }));
  }
}
