import type { StoreCtx } from './ctx.ts';

/**
 * What the database says about the queue and the fleet, read at scrape time for the
 * Prometheus gauges (control-plane/metrics.ts). Every read is a GROUP BY over a bounded
 * set of rows, through an index that holds only those rows: queued tasks (`tasks_ready`),
 * live leases (`task_leases_open`), instances not terminated (`cluster_instances_active`),
 * the newest hour of tasks (the primary key: ids are time-ordered, lib/ids.ts). Connected
 * runners are read from the runners table, one row per runner the installation has seen.
 * No statement returns a row per task.
 */

/** Queued tasks of one cluster and code package name: all of them, and those eligible now. */
export interface QueueDepth {
  cluster: string;
  code: string;
  queued: number;
  ready: number;
}

export interface GaugeReadings {
  queue: QueueDepth[];
  /** Live leases per cluster (each holds a runner slot), and of them those running. */
  leases: { cluster: string; live: number; running: number }[];
  /** Tasks created in the last `recentMs`, by their status now. */
  recent: { status: string; n: number }[];
  /** Instances not terminated, by state (ADD, LIVE, KILL). */
  instances: { cluster: string; state: string; n: number }[];
  /** Connected runners: how many, their slots (draining ones' not counted), how many are penalised now. */
  runners: { cluster: string; runners: number; slots: number; penalised: number }[];
}

/** The window of `GaugeReadings.recent`. */
export const RECENT_MS = 3600_000;

export class GaugesStore {
  constructor(private readonly c: StoreCtx) {}

  /** One reading of every gauge; `aliveMs`: a runner marked connected counts if it beat within this. */
  async read(aliveMs: number): Promise<GaugeReadings> {
    const now = this.c.clock.now();
    // The smallest id a task created at (now - RECENT_MS) can have: 12 hex digits of milliseconds.
    const since = (now.getTime() - RECENT_MS).toString(16).padStart(12, '0').slice(-12) + '000000000000';
    const db = this.c.db;
    const [queue, leases, recent, instances, runners] = await Promise.all([
      db.query<QueueDepth>(
        `SELECT cluster, code_name AS code, count(*)::int AS queued, (count(*) FILTER (WHERE eligible_at <= $1))::int AS ready
         FROM tasks WHERE status = 'queued' GROUP BY cluster, code_name`,
        [now],
      ),
      db.query<{ cluster: string; live: number; running: number }>(
        `SELECT cluster, count(*)::int AS live, (count(*) FILTER (WHERE state = 'running'))::int AS running
         FROM task_leases WHERE ended_at IS NULL GROUP BY cluster`,
      ),
      db.query<{ status: string; n: number }>('SELECT status, count(*)::int AS n FROM tasks WHERE id >= $1 GROUP BY status', [since]),
      db.query<{ cluster: string; state: string; n: number }>(
        `SELECT c.name AS cluster, i.type AS state, count(*)::int AS n
         FROM cluster_instances i JOIN clusters c ON c.id = i.cluster_id WHERE i.type <> 'TERMINATE' GROUP BY c.name, i.type`,
      ),
      db.query<{ cluster: string; runners: number; slots: number; penalised: number }>(
        `SELECT c.name AS cluster, count(*)::int AS runners, (coalesce(sum(r.slots) FILTER (WHERE NOT r.draining), 0))::int AS slots,
           (count(*) FILTER (WHERE r.penalty_until > $1))::int AS penalised
         FROM runners r JOIN clusters c ON c.id = r.cluster_id WHERE r.connected AND r.last_beat_at > $2 GROUP BY c.name`,
        [now, new Date(now.getTime() - aliveMs)],
      ),
    ]);
    return { queue: queue.rows, leases: leases.rows, recent: recent.rows, instances: instances.rows, runners: runners.rows };
  }
}
