import type { StoreCtx } from './ctx.ts';

/** A cluster as the workers API names it (a "queue"). */
export interface ClusterRef {
  id: string;
  name: string;
}

/** A task a worker runs now. */
export interface WorkerTask {
  id: string;
  /** Its code package's name ('' for a third-party worker's task). */
  name: string;
  leaseId: string | null;
  /** The slot it runs in, as the runner last reported (null: not reported yet). */
  slot: number | null;
  /** Seconds since its container started (null: not started yet). */
  runningTimeS: number | null;
}

/** A worker (a runner, or a third-party daemon registered through the API) as the workers API shows it. */
export interface WorkerRecord {
  id: string;
  cluster: ClusterRef;
  external: boolean;
  state: 'connected' | 'draining' | 'disconnected' | 'registered';
  hostname: string | null;
  address: string | null;
  agentVersion: string | null;
  dockerVersion: string | null;
  instance: { id: string; state: 'ADD' | 'LIVE' | 'KILL' | 'TERMINATE' | null } | null;
  tags: string[];
  /** Queue names: the cluster for a runner, what a third-party worker reported. */
  queues: string[];
  /** The queue its current task came from: a busy runner's cluster, what a third-party worker reported. */
  queue: string | null;
  slotsBusy: number;
  slotsTotal: number;
  tasks: WorkerTask[];
  /** The replica holding the runner's session (null for third-party workers and disconnected runners). */
  replica: string | null;
  firstSeen: Date;
  lastSeen: Date | null;
  draining: boolean;
  penaltyUntil: Date | null;
  penaltyReason: string | null;
  /** A third-party worker's registration timeout, seconds. */
  timeoutS: number | null;
}

interface WorkerRow {
  id: string;
  cluster_id: string;
  cluster_name: string;
  external: boolean;
  connected: boolean;
  draining: boolean;
  drain_requested_at: Date | null;
  hostname: string | null;
  address: string | null;
  agent_version: string | null;
  docker_version: string | null;
  instance_id: string | null;
  instance_type: 'ADD' | 'LIVE' | 'KILL' | 'TERMINATE' | null;
  tags: string[];
  queues: string[] | null;
  slots: number;
  server_id: string | null;
  created_at: Date;
  last_beat_at: Date | null;
  penalty_until: Date | null;
  penalty_reason: string | null;
  timeout_s: number | null;
  current_task: string | null;
  current_queue: string | null;
  slot_tasks: { slot?: number; leaseId?: string }[] | null;
}

function toWorker(r: WorkerRow, tasks: WorkerTask[]): WorkerRecord {
  const slots = new Map((r.slot_tasks ?? []).map((s) => [s.leaseId ?? '', Number(s.slot ?? 0)]));
  const withSlots = tasks.map((t) => ({ ...t, slot: t.leaseId && slots.has(t.leaseId) ? slots.get(t.leaseId)! : null }));
  if (r.external && r.current_task) withSlots.push({ id: r.current_task, name: '', leaseId: null, slot: 0, runningTimeS: null });
  return {
    id: r.id,
    cluster: { id: r.cluster_id, name: r.cluster_name },
    external: r.external,
    state: r.external ? 'registered' : !r.connected ? 'disconnected' : r.draining || r.drain_requested_at ? 'draining' : 'connected',
    hostname: r.hostname,
    address: r.address,
    agentVersion: r.agent_version,
    dockerVersion: r.docker_version,
    instance: r.instance_id ? { id: r.instance_id, state: r.instance_type } : null,
    tags: r.tags,
    queues: r.external ? (r.queues ?? []) : [r.cluster_name],
    queue: r.external ? r.current_queue : tasks.length > 0 ? r.cluster_name : null,
    slotsBusy: r.external ? (r.current_task ? 1 : 0) : tasks.length,
    slotsTotal: r.external ? Math.max(1, r.slots) : r.slots,
    tasks: withSlots,
    replica: r.external || !r.connected ? null : r.server_id,
    firstSeen: r.created_at,
    lastSeen: r.last_beat_at,
    draining: r.draining || r.drain_requested_at !== null,
    penaltyUntil: r.penalty_until,
    penaltyReason: r.penalty_reason,
    timeoutS: r.timeout_s,
  };
}

/** A third-party worker's registration or report. */
export interface WorkerReport {
  id: string;
  clusterId: string;
  address: string;
  /** Absent: keep what was recorded. */
  tags?: string[];
  queues?: string[];
  timeoutS?: number;
  /** status_report only: the task it runs now ('' or absent clears it). */
  task?: string;
  /** status_report only: the queue that task came from ('' or absent clears it). */
  queue?: string;
}

/** What a registration or report found. */
export type WorkerWrite = 'ok' | 'taken' | 'unknown';

/**
 * The workers registry as the workers API (/2/workers.*) reads and writes it: runners rows,
 * Gantry's own (written by their sessions) and third-party daemons' (`external`, written
 * through the API with their cluster's runner token, gone once their timeout passes).
 */
export class WorkersStore {
  constructor(private readonly c: StoreCtx) {}

  /** The live clusters whose workers this user sees: their own, and operator clusters (no owner) when they are an operator. */
  async visibleClusters(userId: string, operator: boolean): Promise<ClusterRef[]> {
    const r = await this.c.db.query<ClusterRef>(
      `SELECT id, name FROM clusters WHERE deleted_at IS NULL AND (user_id = $1 OR ($2::boolean AND user_id IS NULL)) ORDER BY name`,
      [userId, operator],
    );
    return r.rows;
  }

  /**
   * The workers of these clusters seen within `lastSeenS` seconds (undefined: all), with
   * their live tasks; third-party workers whose timeout has passed are gone already.
   * `ids` narrows the list to those workers.
   */
  async list(clusterIds: string[], o: { lastSeenS?: number; ids?: string[] } = {}): Promise<WorkerRecord[]> {
    const now = this.c.clock.now();
    const since = o.lastSeenS ? new Date(now.getTime() - o.lastSeenS * 1000) : null;
    const r = await this.c.db.query<WorkerRow>(
      `SELECT r.id, r.cluster_id, c.name AS cluster_name, r.external, r.connected, r.draining, r.drain_requested_at, r.hostname,
         r.address, r.agent_version, r.docker_version, r.instance_id, i.type AS instance_type, r.tags, r.queues, r.slots,
         r.server_id, r.created_at, r.last_beat_at, r.penalty_until, r.penalty_reason, r.timeout_s, r.current_task,
         r.current_queue, r.stats -> 'slotTasks' AS slot_tasks
       FROM runners r JOIN clusters c ON c.id = r.cluster_id
       LEFT JOIN LATERAL (SELECT type FROM cluster_instances ci WHERE ci.cluster_id = r.cluster_id AND ci.instance_id = r.instance_id
                          ORDER BY ci.launched_at DESC NULLS LAST LIMIT 1) i ON r.instance_id IS NOT NULL
       WHERE r.cluster_id = ANY($1::text[])
         AND ($2::timestamptz IS NULL OR r.last_beat_at >= $2 OR r.connected)
         AND ($3::text[] IS NULL OR r.id = ANY($3::text[]))
         AND NOT (r.external AND r.last_beat_at + r.timeout_s * interval '1 second' < $4)
       ORDER BY c.name, r.id`,
      [clusterIds, since, o.ids?.length ? o.ids : null, now],
    );
    const ids = r.rows.filter((x) => !x.external).map((x) => x.id);
    const tasks = new Map<string, WorkerTask[]>();
    if (ids.length > 0) {
      const t = await this.c.db.query<{ runner_id: string; task_id: string; lease_id: string; code_name: string; started_at: Date | null }>(
        `SELECT l.runner_id, l.task_id, l.id AS lease_id, t.code_name, l.started_at
         FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.runner_id = ANY($1::text[]) AND l.ended_at IS NULL ORDER BY l.granted_at, l.id`,
        [ids],
      );
      for (const x of t.rows) {
        const list = tasks.get(x.runner_id) ?? [];
        list.push({
          id: x.task_id,
          name: x.code_name,
          leaseId: x.lease_id,
          slot: null,
          runningTimeS: x.started_at ? Math.max(0, Math.floor((now.getTime() - x.started_at.getTime()) / 1000)) : null,
        });
        tasks.set(x.runner_id, list);
      }
    }
    return r.rows.map((x) => toWorker(x, tasks.get(x.id) ?? []));
  }

  /**
   * Registers a third-party worker in its cluster (or renews its registration). 'taken':
   * the id is a Gantry runner's, or another cluster's worker's.
   */
  async register(w: WorkerReport & { timeoutS: number }): Promise<WorkerWrite> {
    const now = this.c.clock.now();
    const r = await this.c.db.query(
      `INSERT INTO runners (id, cluster_id, external, timeout_s, tags, queues, address, connected, created_at, last_beat_at, slots)
       VALUES ($1, $2, true, $3, coalesce($4::text[], '{}'), $5::text[], $6, false, $7, $7, 1)
       ON CONFLICT (id) DO UPDATE SET timeout_s = $3, tags = coalesce($4::text[], runners.tags),
         queues = coalesce($5::text[], runners.queues), address = $6, last_beat_at = $7,
         -- a registration that had expired starts afresh
         created_at = CASE WHEN runners.last_beat_at + runners.timeout_s * interval '1 second' < $7 THEN $7 ELSE runners.created_at END,
         current_task = CASE WHEN runners.last_beat_at + runners.timeout_s * interval '1 second' < $7 THEN NULL ELSE runners.current_task END
         WHERE runners.external AND runners.cluster_id = $2`,
      [w.id, w.clusterId, w.timeoutS, w.tags ?? null, w.queues ?? null, w.address, now],
    );
    return r.rowCount === 1 ? 'ok' : 'taken';
  }

  /** A third-party worker's status report: it is alive, runs `task` (or none), listens on `queues` (absent: unchanged). */
  async report(w: WorkerReport): Promise<WorkerWrite> {
    const now = this.c.clock.now();
    const r = await this.c.db.query<{ external: boolean; cluster_id: string; expired: boolean }>(
      `UPDATE runners SET last_beat_at = $3, current_task = nullif($4, ''), tags = coalesce($5::text[], tags),
         queues = coalesce($6::text[], queues), address = $7, current_queue = nullif($8, '')
       WHERE id = $1 AND external AND cluster_id = $2 AND last_beat_at + timeout_s * interval '1 second' >= $3
       RETURNING external`,
      [w.id, w.clusterId, now, w.task ?? '', w.tags ?? null, w.queues ?? null, w.address, w.queue ?? ''],
    );
    if (r.rowCount === 1) return 'ok';
    return (await this.isTaken(w.id, w.clusterId)) ? 'taken' : 'unknown';
  }

  /** Removes a third-party worker's registration (its recorded stats stay, for its cluster's owner). */
  async unregister(id: string, clusterId: string): Promise<WorkerWrite> {
    const r = await this.c.db.query('DELETE FROM runners WHERE id = $1 AND external AND cluster_id = $2', [id, clusterId]);
    if (r.rowCount === 1) return 'ok';
    return (await this.isTaken(id, clusterId)) ? 'taken' : 'unknown';
  }

  private async isTaken(id: string, clusterId: string): Promise<boolean> {
    const r = await this.c.db.query<{ x: number }>('SELECT 1 AS x FROM runners WHERE id = $1 AND NOT (external AND cluster_id = $2)', [id, clusterId]);
    return r.rows.length > 0;
  }

  /** Deletes third-party registrations whose timeout has passed (leader work); returns how many. */
  async expireExternal(): Promise<number> {
    const r = await this.c.db.query(
      `DELETE FROM runners WHERE external AND last_beat_at + timeout_s * interval '1 second' < $1`,
      [this.c.clock.now()],
    );
    return r.rowCount;
  }
}
