import type { StoreCtx } from './ctx.ts';
import { checkFence, type Fence } from './fence.ts';
import type { FleetSnapshot, FleetStore, NewInstance } from '../../autoscaler/ports.ts';
import type { AutoscaleState, AwsSettings, InstanceType, ScaledCluster } from '../../autoscaler/types.ts';

/** A clusters row as AutoscaleStore.clusters reads it. */
interface ScaledClusterRow {
  id: string;
  name: string;
  provider: 'ec2' | 'local';
  memory_mb: number;
  runners_min: number;
  runners_max: number;
  runners_per_instance: number;
  disable: boolean;
  aws: AwsSettings | null;
  user_data: string | null;
  deleted_at: Date | null;
  updated_at: Date;
}

function toScaledCluster(r: ScaledClusterRow): ScaledCluster {
  return {
    id: r.id,
    name: r.name,
    provider: r.provider,
    memoryMb: r.memory_mb,
    runnersMin: r.runners_min,
    runnersMax: r.runners_max,
    runnersPerInstance: r.runners_per_instance,
    disable: r.disable,
    aws: r.aws,
    userData: r.user_data,
    deletedAt: r.deleted_at,
    updatedAt: r.updated_at,
  };
}

/**
 * The autoscaler's reads and writes (leader work: every write is fenced). Instances are the
 * `cluster_instances` rows; their runners are the connected `runners` with that instance_id.
 */
export class AutoscaleStore {
  constructor(private readonly c: StoreCtx) {}

  /** These reads and writes as the autoscaler's FleetStore for one leadership: every write carries its fence. */
  fleet(fence: Fence): FleetStore {
    return {
      leadership: fence.term,
      clusters: () => this.clusters(),
      loadState: (clusterId) => this.loadState(clusterId),
      saveState: (clusterId, state, ewma) => this.saveState(clusterId, state, ewma, fence),
      markLive: (clusterId) => this.markLive(clusterId, fence),
      snapshot: (clusterId, clusterName) => this.snapshot(clusterId, clusterName),
      recorded: (clusterId) => this.recorded(clusterId),
      recordInstances: (clusterId, provider, rows, bootDeadline) => this.recordInstances(clusterId, provider, rows, bootDeadline, fence),
      setType: (clusterId, ids, from, to) => this.setType(clusterId, ids, from, to, fence),
      idle: (clusterId, ids) => this.idle(clusterId, ids),
    };
  }

  async clusters(): Promise<ScaledCluster[]> {
    return (
      await this.c.db.query<ScaledClusterRow>(
        `SELECT c.id, c.name, c.provider, c.memory_mb, c.runners_min, c.runners_max, c.runners_per_instance, c.disable,
           c.aws, c.user_data, c.deleted_at, c.updated_at
         FROM clusters c
         WHERE c.provider IS NOT NULL
           AND (c.deleted_at IS NULL OR EXISTS (SELECT 1 FROM cluster_instances i WHERE i.cluster_id = c.id AND i.type <> 'TERMINATE'))
         ORDER BY c.id`,
      )
    ).rows.map(toScaledCluster);
  }

  async loadState(clusterId: string): Promise<AutoscaleState | undefined> {
    const r = await this.c.db.query<{ state: AutoscaleState }>('SELECT state FROM autoscaler_state WHERE cluster_id = $1', [clusterId]);
    const s = r.rows[0]?.state;
    return s && (s as { v?: number }).v === 1 ? s : undefined;
  }

  async saveState(clusterId: string, state: AutoscaleState, ewma: number, fence: Fence | undefined): Promise<void> {
    await this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      await q.query(
        `INSERT INTO autoscaler_state (cluster_id, state, ewma, updated_at) VALUES ($1, $2::jsonb, $3, $4)
         ON CONFLICT (cluster_id) DO UPDATE SET state = EXCLUDED.state, ewma = EXCLUDED.ewma, updated_at = EXCLUDED.updated_at`,
        [clusterId, JSON.stringify(state), Number.isFinite(ewma) ? ewma : 0, this.c.clock.now()],
      );
    });
  }

  /** ADD instances whose runner has connected become LIVE. */
  async markLive(clusterId: string, fence: Fence | undefined): Promise<number> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const r = await q.query(
        `UPDATE cluster_instances i SET type = 'LIVE', live_at = $2, updated_at = $2
         WHERE i.cluster_id = $1 AND i.type = 'ADD'
           AND EXISTS (SELECT 1 FROM runners r WHERE r.cluster_id = $1 AND r.instance_id = i.instance_id AND r.connected)`,
        [clusterId, this.c.clock.now()],
      );
      return r.rowCount;
    });
  }

  /**
   * One consistent read: running leases of the cluster, tasks that could be leased now (not
   * delayed, not paused, not held back by a full max_concurrency), and every instance with
   * its runners' slots and busy count.
   */
  async snapshot(clusterId: string, clusterName: string): Promise<FleetSnapshot> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      const busy = await q.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM task_leases WHERE cluster = $1 AND ended_at IS NULL AND state IN ('accepted', 'running')`,
        [clusterName],
      );
      const queued = await q.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM tasks t JOIN codes c ON c.id = t.code_id AND NOT c.paused
           JOIN code_revisions r ON r.id = c.latest_revision_id
         WHERE t.status = 'queued' AND t.lease_id IS NULL AND t.cluster = $1 AND t.eligible_at <= $2
           AND (r.max_concurrency IS NULL
             OR r.max_concurrency > (SELECT count(*) FROM task_leases l WHERE l.code_id = t.code_id AND l.ended_at IS NULL))`,
        [clusterName, now],
      );
      const inst = await q.query<{
        instance_id: string; type: InstanceType; launched_at: Date | null; live_at: Date | null; kill_at: Date | null;
        created_at: Date; intent_id: string | null; slots: number; busy: number; last_busy: Date | null;
      }>(
        `SELECT i.instance_id, i.type, i.launched_at, i.live_at, i.kill_at, i.created_at, i.intent_id,
           coalesce((SELECT sum(r.slots)::int FROM runners r WHERE r.cluster_id = $1 AND r.instance_id = i.instance_id AND r.connected), 0) AS slots,
           coalesce((SELECT count(*)::int FROM task_leases l JOIN runners r ON r.id = l.runner_id
             WHERE r.cluster_id = $1 AND r.instance_id = i.instance_id AND l.ended_at IS NULL), 0) AS busy,
           (SELECT max(l.ended_at) FROM task_leases l JOIN runners r ON r.id = l.runner_id
             WHERE r.cluster_id = $1 AND r.instance_id = i.instance_id) AS last_busy
         FROM cluster_instances i WHERE i.cluster_id = $1 AND i.type <> 'TERMINATE' ORDER BY i.created_at, i.id`,
        [clusterId],
      );
      return {
        busy: busy.rows[0]!.n,
        queued: queued.rows[0]!.n,
        instances: inst.rows.map((i) => ({
          id: i.instance_id,
          type: i.type,
          launchedAt: (i.launched_at ?? i.created_at).getTime(),
          liveAt: i.live_at?.getTime() ?? null,
          killAt: i.kill_at?.getTime() ?? null,
          runnersTotal: i.slots,
          runnersBusy: i.busy,
          intentId: i.intent_id,
          lastBusyAt: i.last_busy?.getTime() ?? null,
        })),
      };
    });
  }

  /** Records launched (or adopted) instances; an instance already recorded is left as it is. */
  async recordInstances(
    clusterId: string,
    provider: 'ec2' | 'local',
    rows: readonly NewInstance[],
    bootDeadline: Date,
    fence: Fence | undefined,
  ): Promise<void> {
    if (rows.length === 0) return;
    const now = this.c.clock.now();
    await this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      for (const r of rows) {
        await q.query(
          `INSERT INTO cluster_instances (id, cluster_id, instance_id, provider, type, intent_id, launched_at, subnet_id,
             boot_deadline, created_at, updated_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10) ON CONFLICT (cluster_id, instance_id) DO NOTHING`,
          [this.c.ids(), clusterId, r.instanceId, provider, r.type ?? 'ADD', r.intentId, r.launchedAt, r.subnetId ?? null, bootDeadline, now],
        );
      }
    });
  }

  /** Moves instances from one of `from` to `to`; returns the ids moved. */
  async setType(clusterId: string, ids: readonly string[], from: readonly InstanceType[], to: InstanceType, fence: Fence | undefined): Promise<string[]> {
    if (ids.length === 0) return [];
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const r = await q.query<{ instance_id: string }>(
        `UPDATE cluster_instances SET type = $4, updated_at = $5,
           kill_at = CASE WHEN $4 = 'KILL' THEN $5 WHEN $4 = 'LIVE' THEN NULL ELSE kill_at END,
           terminated_at = CASE WHEN $4 = 'TERMINATE' THEN $5 ELSE terminated_at END
         WHERE cluster_id = $1 AND instance_id = ANY($2::text[]) AND type = ANY($3::text[]) RETURNING instance_id`,
        [clusterId, ids, from, to, now],
      );
      return r.rows.map((x) => x.instance_id);
    });
  }

  /** Of these instances, those whose runners hold no live lease (safe to terminate). */
  async idle(clusterId: string, ids: readonly string[]): Promise<string[]> {
    if (ids.length === 0) return [];
    const r = await this.c.db.query<{ instance_id: string }>(
      `SELECT x.id AS instance_id FROM unnest($2::text[]) AS x(id) WHERE NOT EXISTS (
         SELECT 1 FROM task_leases l JOIN runners r ON r.id = l.runner_id
         WHERE r.cluster_id = $1 AND r.instance_id = x.id AND l.ended_at IS NULL)`,
      [clusterId, ids],
    );
    return r.rows.map((x) => x.instance_id);
  }

  /** Instances (of any cluster) among these that take no new work: KILL or TERMINATE. */
  async held(instanceIds: readonly string[]): Promise<Set<string>> {
    if (instanceIds.length === 0) return new Set();
    const r = await this.c.db.query<{ instance_id: string }>(
      `SELECT instance_id FROM cluster_instances WHERE instance_id = ANY($1::text[]) AND type IN ('KILL', 'TERMINATE')`,
      [instanceIds],
    );
    return new Set(r.rows.map((x) => x.instance_id));
  }

  /**
   * Makes a cluster scale with the local provider (runner processes on this host) between
   * `runnersMin` and `runnersMax` runner slots, `runnersPerInstance` slots per process.
   */
  async configureLocal(
    clusterId: string,
    o: { runnersMin: number; runnersMax: number; runnersPerInstance: number; ownerId?: string },
  ): Promise<void> {
    // An owner lets the embedded start's user see the cluster (GET /2/clusters, stats, terminate).
    await this.c.db.query(
      `UPDATE clusters SET provider = 'local', runners_min = $2, runners_max = $3, runners_per_instance = $4, updated_at = $5,
         user_id = coalesce(user_id, $6)
       WHERE id = $1`,
      [clusterId, o.runnersMin, o.runnersMax, o.runnersPerInstance, this.c.clock.now(), o.ownerId ?? null],
    );
  }

  /** Stops scaling a cluster with the local provider (GANTRY_LOCAL_RUNNERS=0). */
  async unconfigureLocal(clusterId: string): Promise<void> {
    await this.c.db.query(`UPDATE clusters SET provider = NULL, updated_at = $2 WHERE id = $1 AND provider = 'local'`, [
      clusterId,
      this.c.clock.now(),
    ]);
  }

  /** Recorded instances for the provider reconciler. */
  async recorded(clusterId: string): Promise<{ instanceId: string; type: InstanceType; launchedAt: Date; bootDeadline: Date | null; intentId: string | null }[]> {
    const r = await this.c.db.query<{ instance_id: string; type: InstanceType; launched_at: Date | null; created_at: Date; boot_deadline: Date | null; intent_id: string | null }>(
      `SELECT instance_id, type, launched_at, created_at, boot_deadline, intent_id FROM cluster_instances
       WHERE cluster_id = $1 AND type <> 'TERMINATE'`,
      [clusterId],
    );
    return r.rows.map((x) => ({
      instanceId: x.instance_id,
      type: x.type,
      launchedAt: x.launched_at ?? x.created_at,
      bootDeadline: x.boot_deadline,
      intentId: x.intent_id,
    }));
  }
}
