import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';
import { run, statement } from './statements.ts';

/**
 * Leases while they live: the runner protocol's state in the store. Every transition is
 * one UPDATE guarded by lease id, attempt, runner and state; zero rows means the caller is
 * stale and is told so. PostgreSQL (or PGlite) is the only source of truth: concurrency
 * limits count live lease rows, so a crashed holder cannot leak a slot. Claims (how a lease
 * begins) are in claims.ts, outcomes (how it ends) in outcomes.ts.
 */

export type LeaseState = 'offered' | 'accepted' | 'running' | 'done';

export interface Lease {
  id: string;
  taskId: string;
  attempt: number;
  runnerId: string;
  sessionEpoch: number;
  codeId: string;
  cluster: string;
  state: LeaseState;
  grantedAt: Date;
  expiresAt: Date;
  startedAt: Date | null;
  endedAt: Date | null;
  outcome: string | null;
  containerId: string | null;
  cancelSentAt: Date | null;
}

/** A task_leases row as SELECT * reads it. */
export interface LeaseRow {
  id: string;
  task_id: string;
  attempt: number;
  runner_id: string;
  session_epoch: number;
  code_id: string;
  cluster: string;
  state: LeaseState;
  granted_at: Date;
  expires_at: Date;
  started_at: Date | null;
  ended_at: Date | null;
  outcome: string | null;
  container_id: string | null;
  cancel_sent_at: Date | null;
}

export function toLease(r: LeaseRow): Lease {
  return {
    id: r.id,
    taskId: r.task_id,
    attempt: r.attempt,
    runnerId: r.runner_id,
    sessionEpoch: r.session_epoch,
    codeId: r.code_id,
    cluster: r.cluster,
    state: r.state,
    grantedAt: r.granted_at,
    expiresAt: r.expires_at,
    startedAt: r.started_at,
    endedAt: r.ended_at,
    outcome: r.outcome,
    containerId: r.container_id,
    cancelSentAt: r.cancel_sent_at,
  };
}

/** A lease named by the runner: its id and attempt. */
export interface LeaseKey {
  leaseId: string;
  attempt: number;
}

/** A Started report: the container that runs the lease's task, and when it started. */
export interface StartedReport extends LeaseKey {
  containerId: string;
  startedAt: Date;
}

/** A lease a Started report moved to running: when it was granted, and its task's labels and eligibility. */
export interface StartedLease {
  grantedAt: Date;
  cluster: string;
  codeName: string;
  /** When the task could first be handed out (created plus delay): its queue wait starts here. */
  eligibleAt: Date | null;
}

/** Outcomes a lease ends with when it was taken away rather than completed. */
export const RECLAIMED: ReadonlySet<string> = new Set(['offer_expired', 'rejected', 'reclaimed', 'revoked', 'handed_back', 'no_slot']);

const ACCEPT = statement('lease-accept');
const STARTED = statement('lease-started');
const RENEW = statement('lease-renew');
const ALSO_LIVE = statement('lease-renew-also-live');
const PROGRESS = statement('lease-progress');

export class LeasesStore {
  constructor(private readonly c: StoreCtx) {}

  /** Offered → accepted for many leases of one runner; returns the lease ids accepted. */
  async acceptMany(runnerId: string, items: LeaseKey[], ttlMs: number): Promise<Set<string>> {
    if (items.length === 0) return new Set();
    const now = this.c.clock.now();
    const expires = new Date(now.getTime() + ttlMs);
    const r = await this.c.db.tx((q) =>
      run<{ id: string }>(q, ACCEPT, [items.map((i) => i.leaseId), items.map((i) => i.attempt), runnerId, expires, now]),
    );
    return new Set(r.rows.map((x) => x.id));
  }

  /** Started for many leases of one runner; returns each started lease (StartedLease) by id. */
  async startedMany(runnerId: string, items: StartedReport[], ttlMs: number): Promise<Map<string, StartedLease>> {
    if (items.length === 0) return new Map();
    // In a transaction only so that a lost deadlock is retried (see Db.tx).
    return this.c.db.tx((q) => this.startedIn(q, runnerId, items, ttlMs));
  }

  /** startedMany inside the caller's transaction (a Completed that folds its Started in). */
  async startedIn(q: Queryable, runnerId: string, items: StartedReport[], ttlMs: number): Promise<Map<string, StartedLease>> {
    if (items.length === 0) return new Map();
    const now = this.c.clock.now();
    const r = await run<{ id: string; granted_at: Date; cluster: string; code_name: string | null; eligible_at: Date | null }>(q, STARTED, [
      items.map((i) => i.leaseId),
      items.map((i) => i.attempt),
      items.map((i) => i.containerId),
      items.map((i) => i.startedAt.toISOString()),
      runnerId,
      new Date(now.getTime() + ttlMs),
      now,
    ]);
    return new Map(
      r.rows.map((x) => [x.id, { grantedAt: x.granted_at, cluster: x.cluster, codeName: x.code_name ?? '', eligibleAt: x.eligible_at }]),
    );
  }

  /**
   * A Beat's leases: renews every live lease it listed. Returns the listed leases the store
   * does not hold as live for this runner (to be revoked). The runner's own row is the
   * beat's other half (RunnersStore.beat).
   */
  async renew(runnerId: string, leases: LeaseKey[], ttlMs: number): Promise<string[]> {
    const now = this.c.clock.now();
    if (leases.length === 0) return [];
    const ids = leases.map((l) => l.leaseId);
    const r = await run<{ id: string }>(this.c.db, RENEW, [ids, runnerId, new Date(now.getTime() + ttlMs)]);
    const live = new Set(r.rows.map((x) => x.id));
    for (const o of (await run<{ id: string }>(this.c.db, ALSO_LIVE, [ids, runnerId, [...RECLAIMED]])).rows) live.add(o.id);
    return ids.filter((id) => !live.has(id));
  }

  /** Progress from inside the task, relayed by its runner; false when the lease is not live. */
  async progress(leaseId: string, attempt: number, runnerId: string, percent: number | undefined, msg: string | undefined) {
    const r = await run(this.c.db, PROGRESS, [leaseId, attempt, runnerId, percent ?? null, msg ?? null, this.c.clock.now()]);
    return r.rowCount > 0;
  }

  /** Live leases of a runner (for reconcile, drains and cancels). */
  async liveOf(runnerId: string): Promise<Lease[]> {
    return (await this.c.db.query<LeaseRow>('SELECT * FROM task_leases WHERE runner_id = $1 AND ended_at IS NULL', [runnerId])).rows.map(toLease);
  }

  async get(leaseId: string): Promise<Lease | undefined> {
    const r = (await this.c.db.query<LeaseRow>('SELECT * FROM task_leases WHERE id = $1', [leaseId])).rows[0];
    return r && toLease(r);
  }

  /** The cluster of a lease and the code revision its task runs (what FetchCode may serve), if the lease exists. */
  async codeOf(leaseId: string): Promise<{ cluster: string; codeRevisionId: string } | undefined> {
    const r = (
      await this.c.db.query<{ cluster: string; code_revision_id: string }>(
        'SELECT l.cluster, t.code_revision_id FROM task_leases l JOIN tasks t ON t.id = l.task_id WHERE l.id = $1',
        [leaseId],
      )
    ).rows[0];
    return r && { cluster: r.cluster, codeRevisionId: r.code_revision_id };
  }

  /** Rebinds a runner's live leases to its new session after a reconnect. */
  async rebind(runnerId: string, leaseIds: string[], epoch: number, ttlMs: number): Promise<void> {
    if (leaseIds.length === 0) return;
    await this.c.db.query(
      `UPDATE task_leases SET session_epoch = $3, expires_at = greatest(expires_at, $4)
       WHERE runner_id = $1 AND id = ANY($2::text[]) AND ended_at IS NULL`,
      [runnerId, leaseIds, epoch, new Date(this.c.clock.now().getTime() + ttlMs)],
    );
  }

  /**
   * Live leases of a runner whose task has a cancel requested and no Cancel sent yet; with
   * `resend`, those already sent too (a new session: a Cancel written to the old stream may
   * never have been read).
   */
  async pendingCancels(runnerId: string, resend = false): Promise<LeaseKey[]> {
    const r = await this.c.db.query<{ lease_id: string; attempt: number }>(
      `SELECT l.id AS lease_id, l.attempt FROM task_leases l JOIN tasks t ON t.id = l.task_id
       WHERE l.runner_id = $1 AND l.ended_at IS NULL AND t.cancel_requested_at IS NOT NULL
         AND (l.cancel_sent_at IS NULL OR $2)`,
      [runnerId, resend],
    );
    return r.rows.map((x) => ({ leaseId: x.lease_id, attempt: x.attempt }));
  }

  /** Those of these runners that have a live lease whose cancel was requested and not sent. */
  async runnersWithPendingCancels(runnerIds: readonly string[]): Promise<string[]> {
    if (runnerIds.length === 0) return [];
    return (
      await this.c.db.query<{ runner_id: string }>(
        `SELECT DISTINCT l.runner_id FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.runner_id = ANY($1::text[]) AND l.ended_at IS NULL AND l.cancel_sent_at IS NULL
           AND t.cancel_requested_at IS NOT NULL`,
        [runnerIds],
      )
    ).rows.map((r) => r.runner_id);
  }

  async markCancelSent(leaseId: string): Promise<void> {
    await this.c.db.query('UPDATE task_leases SET cancel_sent_at = $2 WHERE id = $1', [leaseId, this.c.clock.now()]);
  }

  /** Which of these lease ids are live (not ended): the concurrency reconciler's truth. */
  async liveAmong(leaseIds: readonly string[]): Promise<Set<string>> {
    if (leaseIds.length === 0) return new Set();
    const r = await this.c.db.query<{ id: string }>('SELECT id FROM task_leases WHERE id = ANY($1::text[]) AND ended_at IS NULL', [
      leaseIds,
    ]);
    return new Set(r.rows.map((x) => x.id));
  }

  /**
   * Accepted and running leases that hold a concurrency slot: of packages with a
   * max_concurrency and of projects with a limit. An offered lease is left out: its claim
   * takes its slot before the offer goes out (Dispatcher.withSlots), and one taken for it
   * meanwhile from here would be a second slot for the same lease, keeping another task out.
   */
  async liveLimited(): Promise<{ leaseId: string; scope: string; limit: number }[]> {
    const r = await this.c.db.query<{ lease_id: string; scope: string; limit: number }>(
      `SELECT l.id AS lease_id, 'code:' || l.code_id AS scope, r.max_concurrency AS "limit"
       FROM task_leases l JOIN codes c ON c.id = l.code_id JOIN code_revisions r ON r.id = c.latest_revision_id
       WHERE l.ended_at IS NULL AND l.state IN ('accepted', 'running') AND r.max_concurrency IS NOT NULL
       UNION ALL
       SELECT l.id, 'project:' || p.id, p.max_running
       FROM task_leases l JOIN tasks t ON t.id = l.task_id JOIN projects p ON p.id = t.project_id
       WHERE l.ended_at IS NULL AND l.state IN ('accepted', 'running') AND p.max_running IS NOT NULL`,
    );
    return r.rows.map((x) => ({ leaseId: x.lease_id, scope: x.scope, limit: x.limit }));
  }

  /** Projects with a limit on running tasks (left out of claims while slots cannot be taken). */
  async limitedProjects(): Promise<string[]> {
    return (await this.c.db.query<{ id: string }>('SELECT id FROM projects WHERE max_running IS NOT NULL')).rows.map((r) => r.id);
  }

  /** Code packages that have a max_concurrency (excluded while slots cannot be taken). */
  async limitedCodes(): Promise<string[]> {
    return (
      await this.c.db.query<{ id: string }>(
        `SELECT c.id FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
         WHERE r.max_concurrency IS NOT NULL AND c.deleted_at IS NULL`,
      )
    ).rows.map((r) => r.id);
  }

  /** Running leases past their task's timeout plus grace: the control plane's backstop. */
  async overdue(graceMs: number): Promise<{ leaseId: string; attempt: number; runnerId: string }[]> {
    const r = await this.c.db.query<{ lease_id: string; attempt: number; runner_id: string }>(
      `SELECT l.id AS lease_id, l.attempt, l.runner_id FROM task_leases l JOIN tasks t ON t.id = l.task_id
       WHERE l.state = 'running' AND l.ended_at IS NULL AND l.cancel_sent_at IS NULL
         AND l.started_at + make_interval(secs => t.timeout + $2::float8 / 1000) < $1`,
      [this.c.clock.now(), graceMs],
    );
    return r.rows.map((x) => ({ leaseId: x.lease_id, attempt: x.attempt, runnerId: x.runner_id }));
  }
}
