import type { StoreCtx } from './ctx.ts';
import type { LogStreams } from './codes.ts';
import { run, statement } from './statements.ts';
import { taskValues, type NewTask, type TasksStore } from './tasks.ts';

/**
 * Claims: how queued tasks become offered leases. Strict priority with ageing (a queued
 * task gains a level per `ageingS` waited), round-robin across code packages within a
 * level, paused packages skipped, `max_concurrency` and a project's limit on running tasks
 * counted from live lease rows under advisory locks, so two dispatchers can never both
 * admit the last slot. A claimed task gets a lease in state `offered` that expires at the
 * accept deadline; its status stays `queued` until the runner reports Started.
 */

/** The runner a claim is for: its id, its session's epoch and its cluster. */
export interface RunnerRef {
  id: string;
  epoch: number;
  cluster: string;
}

/** A claimed task with everything an Offer carries. */
export interface Offer {
  leaseId: string;
  attempt: number;
  taskId: string;
  projectId: string;
  codeId: string;
  codeName: string;
  codeRev: number;
  codeRevisionId: string;
  image: string;
  command: string | null;
  envVars: Record<string, string>;
  config: string | null;
  checksum: string | null;
  logStreams: LogStreams;
  payload: string;
  timeout: number;
  priority: number;
  cluster: string;
  scheduleId: string | null;
  expiresAt: Date;
  /** The package's concurrency limit when it has one (a slot must be taken before the offer). */
  maxConcurrency: number | null;
  /** The project's limit on running tasks when it has one (a slot of its own too). */
  projectMaxRunning: number | null;
}

export interface ClaimOptions {
  /** How long the runner has to Accept. */
  acceptDeadlineMs: number;
  /** A queued task gains one priority level per this many seconds waited (no starvation). */
  ageingS: number;
  /** Code packages to leave out (their concurrency slots cannot be taken right now). */
  exclude?: readonly string[];
  /** Projects to leave out, likewise. */
  excludeProjects?: readonly string[];
}

/** An offer as the claim statements return it (store/sql/claim-*.sql, queue-and-grant.sql). */
interface OfferRow {
  lease_id: string;
  attempt: number;
  task_id: string;
  project_id: string;
  code_id: string;
  code_name: string;
  code_rev: number;
  code_revision_id: string;
  image: string;
  command: string | null;
  env_vars: Record<string, string>;
  config: string | null;
  checksum: string | null;
  log_streams: LogStreams;
  payload: string;
  timeout: number;
  priority: number;
  cluster: string;
  schedule_id: string | null;
  expires_at: Date;
}

function toOffer(r: OfferRow, maxConcurrency: number | null = null, projectMaxRunning: number | null = null): Offer {
  return {
    leaseId: r.lease_id,
    attempt: r.attempt,
    taskId: r.task_id,
    projectId: r.project_id,
    codeId: r.code_id,
    codeName: r.code_name,
    codeRev: r.code_rev,
    codeRevisionId: r.code_revision_id,
    image: r.image,
    command: r.command,
    envVars: r.env_vars,
    config: r.config,
    checksum: r.checksum,
    logStreams: r.log_streams,
    payload: r.payload,
    timeout: r.timeout,
    priority: r.priority,
    cluster: r.cluster,
    scheduleId: r.schedule_id,
    expiresAt: r.expires_at,
    maxConcurrency,
    projectMaxRunning,
  };
}

const CLAIM_UNLIMITED = statement('claim-unlimited');
const CLAIM_CANDIDATES = statement('claim-candidates');
const CLAIM_GRANT = statement('claim-grant');
const FULL_CODES = statement('claim-full-codes');
const FULL_PROJECTS = statement('claim-full-projects');
const LIVE_BY_CODE = statement('claim-live-by-code');
const LIVE_BY_PROJECT = statement('claim-live-by-project');
const LOCK_TASKS = statement('claim-lock-tasks');
const QUEUE_AND_GRANT = statement('queue-and-grant');

export class ClaimsStore {
  constructor(
    private readonly c: StoreCtx,
    private readonly tasks: TasksStore,
  ) {}

  /**
   * Claims up to `n` eligible tasks of the runner's cluster for it, in the order they are
   * to be offered (see the module's comment for the order and the limits).
   */
  async claim(runner: RunnerRef, n: number, o: ClaimOptions): Promise<Offer[]> {
    if (n <= 0) return [];
    const fast = await this.claimUnlimited(runner, n, o);
    return fast ?? this.claimLimited(runner, n, o);
  }

  /**
   * The claim as one statement, committed on its own, for a queue head without concurrency
   * limits (the common case, and the one latency depends on). Undefined when a candidate's
   * package or project has a limit: the whole claim then goes to claimLimited (strict
   * priority is never bent).
   */
  private async claimUnlimited(runner: RunnerRef, n: number, o: ClaimOptions): Promise<Offer[] | undefined> {
    const now = this.c.clock.now();
    const leaseIds = Array.from({ length: n }, () => this.c.ids());
    const r = await run<OfferRow & { limited: boolean }>(this.c.db, CLAIM_UNLIMITED, [
      runner.cluster, now, Math.max(n * 4, 64), o.ageingS, o.exclude ?? [], o.excludeProjects ?? [], n, leaseIds,
      runner.id, runner.epoch, new Date(now.getTime() + o.acceptDeadlineMs),
    ]);
    if (r.rows[0]?.limited) return undefined;
    return r.rows.filter((x) => x.lease_id !== null).map((x) => toOffer(x));
  }

  /**
   * Queues one task and, in the same statement, grants it to `runner` when nothing stands
   * before it (store/sql/queue-and-grant.sql): a new task then reaches an idle runner with
   * one commit instead of two. Otherwise the task is queued as by TasksStore.queue and
   * `offer` is undefined. The statement counts it in one of its owner's queued-tasks
   * counters; when that counter's share is full, nothing is inserted and it goes the way of
   * TasksStore.queue's slow path (QuotaExceededError when the user is at the limit).
   */
  async queueAndGrant(t: NewTask, runner: RunnerRef, acceptDeadlineMs: number): Promise<{ taskId: string; offer: Offer | undefined }> {
    const now = this.c.clock.now();
    const taskId = this.c.ids();
    const values = taskValues(t, taskId, now);
    const hooks = values.pop(); // the statement takes it last, after the lease's parameters
    const r = await run<OfferRow>(this.c.db, QUEUE_AND_GRANT, [
      ...values, this.c.ids(), runner.id, runner.epoch, new Date(now.getTime() + acceptDeadlineMs), now,
      t.delay === 0, this.tasks.quotas.defaults.queuedTasks, hooks,
    ]);
    const row = r.rows[0];
    if (!row) return { taskId: (await this.tasks.queueCounted([t]))[0]!, offer: undefined };
    if (row.lease_id === null) return { taskId, offer: undefined };
    return { taskId, offer: toOffer(row) };
  }

  /** The claim where limits apply, in one transaction (see claim). */
  private async claimLimited(runner: RunnerRef, n: number, o: ClaimOptions): Promise<Offer[]> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      // Packages and projects already at their limit are left out of the scan, so their
      // backlog cannot block the head of the queue; the locked counts below stay the authority.
      const full = (await run<{ code_id: string }>(q, FULL_CODES, [])).rows.map((r) => r.code_id);
      if (o.exclude) full.push(...o.exclude);
      const fullProjects = (await run<{ id: string }>(q, FULL_PROJECTS, [])).rows.map((r) => r.id);
      if (o.excludeProjects) fullProjects.push(...o.excludeProjects);
      const cand = await run<{ id: string; code_id: string; max_concurrency: number | null; project_id: string; project_max: number | null }>(
        q,
        CLAIM_CANDIDATES,
        [runner.cluster, now, Math.max(n * 4, 64), o.ageingS, full, fullProjects],
      );
      if (cand.rows.length === 0) return [];
      // Free slots per limited package and per limited project, from live lease rows, each
      // counted under its advisory lock (packages first, then projects, each in id order).
      const free = new Map<string, number>();
      const limited = [...new Set(cand.rows.filter((r) => r.max_concurrency !== null).map((r) => r.code_id))].sort();
      if (limited.length > 0) {
        for (const codeId of limited) await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [codeId]);
        const liveBy = new Map((await run<{ code_id: string; n: number }>(q, LIVE_BY_CODE, [limited])).rows.map((r) => [r.code_id, r.n]));
        for (const r of cand.rows) {
          if (r.max_concurrency !== null && !free.has(r.code_id)) free.set(r.code_id, r.max_concurrency - (liveBy.get(r.code_id) ?? 0));
        }
      }
      const freeProject = new Map<string, number>();
      const limitedProjects = [...new Set(cand.rows.filter((r) => r.project_max !== null).map((r) => r.project_id))].sort();
      if (limitedProjects.length > 0) {
        for (const projectId of limitedProjects) await q.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`project:${projectId}`]);
        const rows = (await run<{ project_id: string; n: number }>(q, LIVE_BY_PROJECT, [limitedProjects])).rows;
        const liveBy = new Map(rows.map((r) => [r.project_id, r.n]));
        for (const r of cand.rows) {
          if (r.project_max !== null && !freeProject.has(r.project_id)) freeProject.set(r.project_id, r.project_max - (liveBy.get(r.project_id) ?? 0));
        }
      }
      // Row locks only on the tasks about to be claimed, in claim order: the next admissible
      // candidates, as many as are still wanted; a candidate another claim holds (or took
      // since the scan) is skipped and the next ones are tried. The candidate list is several
      // times `n` long (for round-robin), and locking all of it would write to every row.
      const chosen: string[] = [];
      const take = (m: Map<string, number>, k: string, d: number) => {
        const v = m.get(k);
        if (v !== undefined) m.set(k, v + d);
      };
      let next = 0;
      while (chosen.length < n && next < cand.rows.length) {
        const batch: (typeof cand.rows)[number][] = [];
        while (batch.length < n - chosen.length && next < cand.rows.length) {
          const r = cand.rows[next++]!;
          if ((free.get(r.code_id) ?? 1) <= 0 || (freeProject.get(r.project_id) ?? 1) <= 0) continue;
          take(free, r.code_id, -1);
          take(freeProject, r.project_id, -1);
          batch.push(r);
        }
        if (batch.length === 0) break;
        const locked = new Set(
          (await run<{ id: string; status: string; lease_id: string | null }>(q, LOCK_TASKS, [batch.map((r) => r.id)])).rows
            .filter((r) => r.status === 'queued' && r.lease_id === null)
            .map((r) => r.id),
        );
        for (const r of batch) {
          if (locked.has(r.id)) {
            chosen.push(r.id);
          } else {
            take(free, r.code_id, 1);
            take(freeProject, r.project_id, 1);
          }
        }
      }
      if (chosen.length === 0) return [];
      const leaseIds = chosen.map(() => this.c.ids());
      const rows = await run<OfferRow>(q, CLAIM_GRANT, [chosen, leaseIds, runner.id, now, runner.epoch, new Date(now.getTime() + o.acceptDeadlineMs)]);
      const limits = new Map(cand.rows.map((r) => [r.id, r]));
      return rows.rows.map((r) => toOffer(r, limits.get(r.task_id)?.max_concurrency ?? null, limits.get(r.task_id)?.project_max ?? null));
    });
  }
}
