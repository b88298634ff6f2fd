import { TASK_STATUSES, type TaskStatus } from './codes.ts';
import type { StoreCtx } from './ctx.ts';

/** A runner as the farm's status shows it. */
export interface FarmHost {
  runnerId: string;
  cluster: string;
  hostname: string | null;
  instanceId: string | null;
  connected: boolean;
  draining: boolean;
  /** Set aside after faults (its circuit is open) until penaltyUntil. */
  penalised: boolean;
  penaltyUntil: Date | null;
  /** Why it was last set aside: its last error. */
  lastError: string | null;
  /** Connected, not draining, not set aside: it takes new work. */
  available: boolean;
  slots: number;
  busy: number;
  lastBeatAt: Date | null;
}

export interface RunningContainer {
  taskId: string;
  projectId: string;
  codeName: string;
  cluster: string;
  runnerId: string;
  containerId: string | null;
  /** starting (accepted, no container yet) or running. */
  state: 'starting' | 'running';
  since: Date;
}

export interface FarmStatus {
  hosts: FarmHost[];
  running: RunningContainer[];
  /** Tasks running in the clusters shown that belong to projects not shown (counted, never named). */
  othersRunning: number;
  queues: {
    clusters: { cluster: string; queued: number; delayed: number; running: number }[];
    codes: { projectId: string; codeId: string; codeName: string; queued: number; delayed: number; running: number }[];
  };
  upcoming: { scheduleId: string; projectId: string; codeName: string; nextStart: Date }[];
  counts: { codes: number; schedules: number; tasks: Record<TaskStatus, number> };
}

/** Whose farm: one user's (their projects, and the clusters they own or are shared) or everything (operators). */
export type FarmScope = { userId: string } | { all: true };

/** Hosts seen this recently are shown, connected or not. */
const HOST_HORIZON_MS = 3600_000;
/** At most this many rows of each list (the busiest first); counts are always whole. */
const MAX_ROWS = 500;
const UPCOMING = 20;

/**
 * The farm at a glance (`GET /2/status`, `gantry status`): hosts, running containers, queue
 * lengths by cluster and code package, the next scheduled runs, and counts. A user sees only
 * their own projects' tasks and the runners of clusters they own or are shared; other
 * users' tasks in those clusters are counted, never named.
 */
export class StatusStore {
  constructor(private readonly c: StoreCtx) {}

  async farm(scope: FarmScope): Promise<FarmStatus> {
    const now = this.c.clock.now();
    const all = 'all' in scope;
    const user = all ? null : scope.userId;
    // $1: the user (null: everyone). Projects and clusters in view:
    const projects = `(SELECT id FROM projects WHERE $1::text IS NULL OR user_id = $1)`;
    const clusters = `(SELECT name FROM clusters WHERE deleted_at IS NULL AND ($1::text IS NULL OR user_id = $1 OR $1 = ANY(shared_to)))`;
    const db = this.c.db;
    const [hosts, running, others, byCluster, byCode, upcoming, counts, byStatus] = await Promise.all([
      db.query<{
        id: string; cluster: string; hostname: string | null; instance_id: string | null; connected: boolean; draining: boolean;
        penalty_until: Date | null; penalty_reason: string | null; slots: number; busy: number; last_beat_at: Date | null;
      }>(
        `SELECT r.id, c.name AS cluster, r.hostname, r.instance_id, r.connected, r.draining, r.penalty_until, r.penalty_reason, r.slots,
           (SELECT count(*)::int FROM task_leases l WHERE l.runner_id = r.id AND l.ended_at IS NULL) AS busy, r.last_beat_at
         FROM runners r JOIN clusters c ON c.id = r.cluster_id
         WHERE c.name IN ${clusters} AND (r.connected OR r.last_beat_at > $2)
         ORDER BY c.name, r.id LIMIT ${MAX_ROWS}`,
        [user, new Date(now.getTime() - HOST_HORIZON_MS)],
      ),
      db.query<{ task_id: string; project_id: string; code_name: string; cluster: string; runner_id: string; container_id: string | null; state: string; since: Date }>(
        `SELECT l.task_id, t.project_id, t.code_name, l.cluster, l.runner_id, l.container_id, l.state,
           coalesce(l.started_at, l.accepted_at, l.granted_at) AS since
         FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.ended_at IS NULL AND l.state IN ('accepted', 'running') AND t.project_id IN ${projects}
         ORDER BY since LIMIT ${MAX_ROWS}`,
        [user],
      ),
      db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.ended_at IS NULL AND l.state IN ('accepted', 'running') AND l.cluster IN ${clusters} AND t.project_id NOT IN ${projects}`,
        [user],
      ),
      db.query<{ cluster: string; queued: number; delayed: number; running: number }>(
        `SELECT cluster, count(*) FILTER (WHERE status = 'queued' AND eligible_at <= $2)::int AS queued,
           count(*) FILTER (WHERE status = 'queued' AND eligible_at > $2)::int AS delayed,
           count(*) FILTER (WHERE status = 'running')::int AS running
         FROM tasks WHERE status IN ('queued', 'running') AND project_id IN ${projects}
         GROUP BY cluster ORDER BY cluster LIMIT ${MAX_ROWS}`,
        [user, now],
      ),
      db.query<{ project_id: string; code_id: string; code_name: string; queued: number; delayed: number; running: number }>(
        `SELECT project_id, code_id, code_name, count(*) FILTER (WHERE status = 'queued' AND eligible_at <= $2)::int AS queued,
           count(*) FILTER (WHERE status = 'queued' AND eligible_at > $2)::int AS delayed,
           count(*) FILTER (WHERE status = 'running')::int AS running
         FROM tasks WHERE status IN ('queued', 'running') AND project_id IN ${projects}
         GROUP BY project_id, code_id, code_name ORDER BY count(*) DESC, code_name LIMIT ${MAX_ROWS}`,
        [user, now],
      ),
      db.query<{ id: string; project_id: string; code_name: string; next_start: Date }>(
        `SELECT id, project_id, code_name, next_start FROM schedules
         WHERE status = 'scheduled' AND next_start IS NOT NULL AND project_id IN ${projects}
         ORDER BY next_start, id LIMIT ${UPCOMING}`,
        [user],
      ),
      db.query<{ codes: number; schedules: number }>(
        `SELECT (SELECT count(*)::int FROM codes WHERE deleted_at IS NULL AND project_id IN ${projects}) AS codes,
           (SELECT count(*)::int FROM schedules WHERE status = 'scheduled' AND project_id IN ${projects}) AS schedules`,
        [user],
      ),
      db.query<{ status: TaskStatus; n: number }>(`SELECT status, count(*)::int AS n FROM tasks WHERE project_id IN ${projects} GROUP BY status`, [user]),
    ]);
    const tasks = Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as Record<TaskStatus, number>;
    for (const r of byStatus.rows) tasks[r.status] = r.n;
    return {
      hosts: hosts.rows.map((r) => {
        const penalised = r.penalty_until !== null && r.penalty_until > now;
        return {
          runnerId: r.id,
          cluster: r.cluster,
          hostname: r.hostname,
          instanceId: r.instance_id,
          connected: r.connected,
          draining: r.draining,
          penalised,
          penaltyUntil: penalised ? r.penalty_until : null,
          lastError: r.penalty_reason,
          available: r.connected && !r.draining && !penalised,
          slots: r.slots,
          busy: r.busy,
          lastBeatAt: r.last_beat_at,
        };
      }),
      running: running.rows.map((r) => ({
        taskId: r.task_id,
        projectId: r.project_id,
        codeName: r.code_name,
        cluster: r.cluster,
        runnerId: r.runner_id,
        containerId: r.container_id,
        state: r.state === 'running' ? 'running' : 'starting',
        since: r.since,
      })),
      othersRunning: others.rows[0]?.n ?? 0,
      queues: {
        clusters: byCluster.rows,
        codes: byCode.rows.map((r) => ({ projectId: r.project_id, codeId: r.code_id, codeName: r.code_name, queued: r.queued, delayed: r.delayed, running: r.running })),
      },
      upcoming: upcoming.rows.map((r) => ({ scheduleId: r.id, projectId: r.project_id, codeName: r.code_name, nextStart: r.next_start })),
      counts: { codes: counts.rows[0]?.codes ?? 0, schedules: counts.rows[0]?.schedules ?? 0, tasks },
    };
  }
}
