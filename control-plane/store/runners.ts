import type { StoreCtx } from './ctx.ts';
import { run, statement } from './statements.ts';

const BEAT = statement('runner-beat');

/** An operator's request that a runner drain (`gantry runner drain`). */
export interface DrainRequest {
  mode: 'finish' | 'hand_back';
  /** How long running tasks may take, from the request. */
  timeoutS: number;
  requestedAt: Date;
}

/** A runner as an operator lists it. */
export interface RunnerListing {
  id: string;
  cluster: string;
  hostname: string | null;
  instanceId: string | null;
  state: 'connected' | 'draining' | 'disconnected';
  slots: number;
  /** Live leases (offered, accepted or running). */
  busy: number;
  lastBeatAt: Date | null;
  penaltyUntil: Date | null;
  penaltyReason: string | null;
  drainRequestedAt: Date | null;
}

/** A runner as the registry last knew it. */
export interface Runner {
  id: string;
  clusterId: string;
  sessionEpoch: number;
  sessionId: string | null;
  serverId: string | null;
  hostname: string | null;
  agentVersion: string | null;
  dockerVersion: string | null;
  instanceId: string | null;
  slots: number;
  memoryMb: number | null;
  connected: boolean;
  draining: boolean;
  connectedAt: Date | null;
  lastBeatAt: Date | null;
  disconnectedAt: Date | null;
  stats: Record<string, unknown> | null;
  /** Length of the runner's last penalty (the next doubles it); 0 once it started a task. */
  penaltyMs: number;
  /** No offers to the runner before this. */
  penaltyUntil: Date | null;
  /** What the last penalty was for. */
  penaltyReason: string | null;
}

/** A runners row as SELECT * reads it (the columns Runner carries). */
interface RunnerRow {
  id: string;
  cluster_id: string;
  session_epoch: number;
  session_id: string | null;
  server_id: string | null;
  hostname: string | null;
  agent_version: string | null;
  docker_version: string | null;
  instance_id: string | null;
  slots: number;
  memory_mb: number | null;
  connected: boolean;
  draining: boolean;
  connected_at: Date | null;
  last_beat_at: Date | null;
  disconnected_at: Date | null;
  stats: Record<string, unknown> | null;
  penalty_ms: number;
  penalty_until: Date | null;
  penalty_reason: string | null;
}

function toRunner(r: RunnerRow): Runner {
  return {
    id: r.id,
    clusterId: r.cluster_id,
    sessionEpoch: r.session_epoch,
    sessionId: r.session_id,
    serverId: r.server_id,
    hostname: r.hostname,
    agentVersion: r.agent_version,
    dockerVersion: r.docker_version,
    instanceId: r.instance_id,
    slots: r.slots,
    memoryMb: r.memory_mb,
    connected: r.connected,
    draining: r.draining,
    connectedAt: r.connected_at,
    lastBeatAt: r.last_beat_at,
    disconnectedAt: r.disconnected_at,
    stats: r.stats,
    penaltyMs: r.penalty_ms,
    penaltyUntil: r.penalty_until,
    penaltyReason: r.penalty_reason,
  };
}

export interface RunnerHello {
  runnerId: string;
  clusterId: string;
  bootId: string;
  hostname: string;
  agentVersion: string;
  dockerVersion: string;
  instanceId: string;
  slots: number;
  memoryMb: number;
  /** Where its stream came from (the gRPC peer, without the port). */
  address?: string;
  /** Its labels, as `key=value` tags. */
  tags?: string[];
}

/** The runner registry: sessions, their epochs, and what runners last reported. */
export class RunnersStore {
  constructor(private readonly c: StoreCtx) {}

  /**
   * A runner opened a session: bumps its epoch (recorded on the leases the session is
   * granted or keeps) and records it as connected to `serverId`. Refused (undefined) when the
   * runner id belongs to another cluster or to a third-party worker.
   */
  async connect(h: RunnerHello, sessionId: string, serverId: string): Promise<Runner | undefined> {
    const now = this.c.clock.now();
    const r = await this.c.db.query<RunnerRow>(
      `INSERT INTO runners (id, cluster_id, session_epoch, session_id, server_id, boot_id, hostname, agent_version,
         docker_version, instance_id, slots, memory_mb, connected, draining, connected_at, last_beat_at, created_at, address, tags)
       VALUES ($1, $2, 1, $3, $4, $5, $6, $7, $8, $9, $10, $11, true, false, $12, $12, $12, $13, $14)
       ON CONFLICT (id) DO UPDATE SET session_epoch = runners.session_epoch + 1, session_id = $3, server_id = $4,
         boot_id = $5, hostname = $6, agent_version = $7, docker_version = $8, instance_id = $9, slots = $10,
         memory_mb = $11, connected = true, draining = false, connected_at = $12, last_beat_at = $12, disconnected_at = NULL,
         drain_requested_at = NULL, drain_mode = NULL, drain_timeout_s = NULL, address = $13, tags = $14
         -- a third-party worker's id (workers.register) is not a runner's to take
         WHERE runners.cluster_id = $2 AND NOT runners.external
       RETURNING *`,
      [h.runnerId, h.clusterId, sessionId, serverId, h.bootId, h.hostname, h.agentVersion, h.dockerVersion,
        h.instanceId || null, h.slots, h.memoryMb, now, h.address ?? null, h.tags ?? []],
    );
    return r.rows[0] && toRunner(r.rows[0]);
  }

  /** The session ended; only the session that is current may mark the runner disconnected. */
  async disconnect(runnerId: string, sessionId: string): Promise<void> {
    await this.c.db.query(
      `UPDATE runners SET connected = false, disconnected_at = $3 WHERE id = $1 AND session_id = $2`,
      [runnerId, sessionId, this.c.clock.now()],
    );
  }

  /**
   * Records a penalty (proto/README.md, 6.5 Penalties) on the runner's row, where every
   * session of the runner, on any replica, reads it at Hello.
   */
  async setPenalty(runnerId: string, penaltyMs: number, until: Date, reason: string): Promise<void> {
    await this.c.db.query('UPDATE runners SET penalty_ms = $2, penalty_until = $3, penalty_reason = $4 WHERE id = $1', [
      runnerId,
      penaltyMs,
      until,
      reason,
    ]);
  }

  /** The runner started a task: its next penalty starts from the base again. */
  async resetPenalty(runnerId: string): Promise<void> {
    await this.c.db.query('UPDATE runners SET penalty_ms = 0 WHERE id = $1 AND penalty_ms <> 0', [runnerId]);
  }

  /**
   * A Beat's runner half: the session is alive, with the machine stats it carried (and the
   * slots they say). Returns a drain an operator asked for, until a Hello clears it.
   */
  async beat(runnerId: string, stats?: unknown): Promise<DrainRequest | undefined> {
    const r = await run<{ drain_requested_at: Date | null; drain_mode: 'finish' | 'hand_back' | null; drain_timeout_s: number | null }>(
      this.c.db,
      BEAT,
      [runnerId, this.c.clock.now(), stats === undefined ? null : JSON.stringify(stats)],
    );
    const x = r.rows[0];
    return x?.drain_requested_at ? { mode: x.drain_mode ?? 'finish', timeoutS: x.drain_timeout_s ?? 3600, requestedAt: x.drain_requested_at } : undefined;
  }

  /** Asks the runner to drain; its session's replica tells it at its next beat. False for an unknown runner. */
  async requestDrain(runnerId: string, mode: 'finish' | 'hand_back', timeoutS: number): Promise<boolean> {
    const r = await this.c.db.query(
      'UPDATE runners SET drain_requested_at = $2, drain_mode = $3, drain_timeout_s = $4 WHERE id = $1',
      [runnerId, this.c.clock.now(), mode, timeoutS],
    );
    return r.rowCount > 0;
  }

  /** Runners, newest first, optionally of one cluster or one runner, with their live leases counted. */
  async list(o: { clusterId?: string; runnerId?: string } = {}): Promise<RunnerListing[]> {
    const r = await this.c.db.query<{
      id: string; cluster: string; hostname: string | null; instance_id: string | null; connected: boolean; draining: boolean;
      slots: number; busy: number; last_beat_at: Date | null; penalty_until: Date | null; penalty_reason: string | null;
      drain_requested_at: Date | null;
    }>(
      `SELECT r.id, c.name AS cluster, r.hostname, r.instance_id, r.connected, r.draining, r.slots,
         (SELECT count(*)::int FROM task_leases l WHERE l.runner_id = r.id AND l.ended_at IS NULL) AS busy,
         r.last_beat_at, r.penalty_until, r.penalty_reason, r.drain_requested_at
       FROM runners r JOIN clusters c ON c.id = r.cluster_id
       WHERE ($1::text IS NULL OR r.cluster_id = $1) AND ($2::text IS NULL OR r.id = $2)
       ORDER BY r.connected DESC, r.last_beat_at DESC NULLS LAST, r.id`,
      [o.clusterId ?? null, o.runnerId ?? null],
    );
    return r.rows.map((x) => ({
      id: x.id,
      cluster: x.cluster,
      hostname: x.hostname,
      instanceId: x.instance_id,
      state: !x.connected ? 'disconnected' : x.draining || x.drain_requested_at ? 'draining' : 'connected',
      slots: x.slots,
      busy: x.busy,
      lastBeatAt: x.last_beat_at,
      penaltyUntil: x.penalty_until,
      penaltyReason: x.penalty_reason,
      drainRequestedAt: x.drain_requested_at,
    }));
  }

  async setDraining(runnerId: string, draining: boolean): Promise<void> {
    await this.c.db.query('UPDATE runners SET draining = $2 WHERE id = $1', [runnerId, draining]);
  }

  async get(runnerId: string): Promise<Runner | undefined> {
    const r = (await this.c.db.query<RunnerRow>('SELECT * FROM runners WHERE id = $1', [runnerId])).rows[0];
    return r && toRunner(r);
  }

  /** The runner holds a session on some replica and has beaten within `withinMs`. */
  async connectedRecently(runnerId: string, withinMs: number): Promise<boolean> {
    const r = await this.c.db.query(
      'SELECT 1 FROM runners WHERE id = $1 AND connected AND last_beat_at > $2',
      [runnerId, new Date(this.c.clock.now().getTime() - withinMs)],
    );
    return r.rows.length > 0;
  }
}
