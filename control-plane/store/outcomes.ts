import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';
import type { TaskStatus } from './codes.ts';
import { TxConflictError } from '../errors.ts';
import { checkFence, type Fence } from './fence.ts';
import { RECLAIMED, type LeaseRow, type LeasesStore, type StartedReport } from './leases.ts';
import { run, statement } from './statements.ts';
import type { TasksStore } from './tasks.ts';
import type { Hooks } from './hooks.ts';

/**
 * How leases end: a runner's result, a Reject, an expired offer, a lost runner, a
 * control-plane timeout. Each is fenced by lease id, attempt and runner (and, for leader
 * work, the leader's term); a final task state is never overwritten. Errors and timeouts
 * spend the task's user-visible retries as new linked tasks; runner loss and runner errors
 * spend the internal budget and requeue the same task. Every method says which leases it
 * ended, so the caller can free their concurrency slots at once (RunnerHub.leasesEnded).
 */

/** What a runner reports at the end of a lease. */
export interface Completion {
  leaseId: string;
  attempt: number;
  /**
   * `task_fault`: the task could not run through its own fault (its image, command or zip
   * package): it ends `error` and spends its own retries, as `failed` does. `runner_error`:
   * the runner could not run it; it is requeued within the internal budget.
   */
  outcome: 'succeeded' | 'failed' | 'timed_out' | 'cancelled' | 'task_fault' | 'runner_error';
  exitCode: number;
  oomKilled: boolean;
  msg: string;
  startedAt: number;
  finishedAt: number;
  /** A Started the runner folded into this result (it never sent one on its own). */
  started?: Omit<StartedReport, 'leaseId' | 'attempt'>;
}

export type Disposition = 'recorded' | 'duplicate' | 'stale';

/** The task a recorded result belonged to, as the metrics label it: its cluster, package and eligibility. */
export interface RecordedTask {
  cluster: string;
  codeName: string;
  eligibleAt: Date | null;
}

/** What completeMany did with each result (aligned with its items), and the leases it ended. */
export interface CompleteResult {
  dispositions: Disposition[];
  ended: string[];
  /** For each item recorded, its task (else undefined): read by the same statements, no extra query. */
  tasks: (RecordedTask | undefined)[];
}

export interface LeaseConfig {
  leaseTtlMs: number;
  /** Internal retries after runner loss or runner errors before the task ends. */
  runnerLossBudget: number;
}

/** The task status each outcome leads to (`retry`: requeued within the internal budget). */
const OUTCOME_STATUS: Record<Completion['outcome'], TaskStatus | 'retry'> = {
  succeeded: 'complete',
  failed: 'error',
  timed_out: 'timeout',
  cancelled: 'cancelled',
  task_fault: 'error',
  runner_error: 'retry',
};

interface TaskForOutcome {
  id: string;
  lease_id: string | null;
  runner_losses: number;
  retries_left: number;
  cancel_requested_at: Date | null;
  status: string;
  cluster: string;
  code_name: string;
  eligible_at: Date | null;
}

const recordedTask = (r: { cluster: string; code_name: string; eligible_at: Date | null }): RecordedTask => ({
  cluster: r.cluster,
  codeName: r.code_name,
  eligibleAt: r.eligible_at,
});

const COMPLETE_FAST = statement('complete-fast');
const LEASE_LOCK = statement('lease-lock');
const TASK_LOCK = statement('task-lock-for-outcome');
const LEASE_END = statement('lease-end');
const TASK_FINISH = statement('task-finish');
const TASK_REQUEUE = statement('task-requeue');
const LEASE_RELEASE = statement('lease-release');
const TASK_RELEASE = statement('task-release');

export class OutcomesStore {
  constructor(
    private readonly c: StoreCtx,
    private readonly tasks: TasksStore,
    private readonly leases: LeasesStore,
  ) {}

  /**
   * Results of many leases of one runner in one transaction, one disposition per item:
   * `duplicate` for the same result again, `stale` for a lease that was taken away. The
   * common case (a result that ends the task, no retry to queue) is one statement for all;
   * the rest (retries, runner errors, stale or duplicate results, a lease listed twice) go
   * one by one. `ended`: the leases these results ended.
   */
  async completeMany(runnerId: string, items: Completion[], cfg: LeaseConfig): Promise<CompleteResult> {
    if (items.length === 0) return { dispositions: [], ended: [], tasks: [] };
    const now = this.c.clock.now();
    const { dispositions, tasks } = await this.c.db.tx(async (q) => {
      // Candidates for the one-statement path: the first result of each lease whose outcome
      // ends the task by itself (a runner error may requeue it).
      const seen = new Set<string>();
      const fast: number[] = [];
      items.forEach((c, i) => {
        if (OUTCOME_STATUS[c.outcome] !== 'retry' && !seen.has(c.leaseId)) fast.push(i);
        seen.add(c.leaseId);
      });
      const recorded = new Map<string, RecordedTask>();
      if (fast.length > 0) {
        const f = fast.map((i) => items[i]!);
        const status = (c: Completion) => OUTCOME_STATUS[c.outcome] as TaskStatus;
        const r = await run<{ id: string; tasks: number; cluster: string; code_name: string; eligible_at: Date | null }>(q, COMPLETE_FAST, [
          f.map((c) => c.leaseId),
          f.map((c) => c.attempt),
          f.map(status),
          f.map((c) => c.msg || (status(c) === 'cancelled' ? 'Cancelled by user' : null)),
          f.map((c) => c.exitCode),
          f.map((c) => (c.startedAt ? new Date(c.startedAt).toISOString() : null)),
          f.map((c) => new Date(c.finishedAt || now.getTime()).toISOString()),
          f.map((c) => c.started?.startedAt.toISOString() ?? null),
          f.map((c) => c.started?.containerId ?? null),
          runnerId,
          now,
        ]);
        if (r.rows.length > 0 && r.rows[0]!.tasks !== r.rows.length) {
          throw new TxConflictError('a task changed while its result was recorded; recording again');
        }
        for (const x of r.rows) recorded.set(x.id, recordedTask(x));
      }
      const out: Disposition[] = [];
      const outTasks: (RecordedTask | undefined)[] = [];
      const fastSet = new Set(fast);
      for (let i = 0; i < items.length; i++) {
        const c = items[i]!;
        const fastTask = fastSet.has(i) ? recorded.get(c.leaseId) : undefined;
        if (fastTask) {
          out.push('recorded');
          outTasks.push(fastTask);
          continue;
        }
        // Everything else as one result at a time (it locks the lease and the task).
        if (c.started) await this.leases.startedIn(q, runnerId, [{ leaseId: c.leaseId, attempt: c.attempt, ...c.started }], cfg.leaseTtlMs);
        const one = await this.completeOne(q, c, runnerId, cfg);
        out.push(one.disposition);
        outTasks.push(one.task);
      }
      return { dispositions: out, tasks: outTasks };
    });
    return { dispositions, ended: items.filter((_, i) => dispositions[i] === 'recorded').map((i) => i.leaseId), tasks };
  }

  private async completeOne(
    q: Queryable,
    c: Completion,
    runnerId: string,
    cfg: LeaseConfig,
  ): Promise<{ disposition: Disposition; task?: RecordedTask }> {
    const now = this.c.clock.now();
    const lease = (await run<LeaseRow>(q, LEASE_LOCK, [c.leaseId])).rows[0];
    if (!lease || lease.attempt !== c.attempt || lease.runner_id !== runnerId) return { disposition: 'stale' };
    if (lease.state === 'done') return { disposition: lease.outcome && RECLAIMED.has(lease.outcome) ? 'stale' : 'duplicate' };
    const task = (await run<TaskForOutcome>(q, TASK_LOCK, [lease.task_id])).rows[0];
    if (!task || task.lease_id !== lease.id) return { disposition: 'stale' };
    const recorded = { disposition: 'recorded' as const, task: recordedTask(task) };
    let status = OUTCOME_STATUS[c.outcome];
    let msg = c.msg;
    if (status === 'retry') {
      if (task.cancel_requested_at) {
        status = 'cancelled';
        msg = 'Cancelled by user';
      } else if (task.runner_losses + 1 <= cfg.runnerLossBudget) {
        const why = `Runner could not run the task (${c.msg}); retrying on another runner`;
        await run(q, LEASE_END, [lease.id, now, 'handed_back', c.exitCode ?? null, why]);
        await run(q, TASK_REQUEUE, [task.id, task.runner_losses + 1, why, now]);
        return recorded;
      } else {
        status = 'error';
        msg = `Runner could not run the task: ${c.msg}`;
      }
    }
    if (status === 'cancelled' && !msg) msg = 'Cancelled by user';
    await run(q, LEASE_END, [lease.id, now, status, c.exitCode ?? null, msg || null]);
    await this.finish(q, task.id, lease.id, status, msg || null, {
      exitCode: c.exitCode,
      startedAt: c.startedAt ? new Date(c.startedAt) : null,
      endedAt: c.finishedAt ? new Date(c.finishedAt) : now,
    });
    if ((status === 'error' || status === 'timeout') && task.retries_left > 0) await this.retryFailed(q, task.id);
    return recorded;
  }

  private async finish(q: Queryable, taskId: string, leaseId: string, status: TaskStatus, msg: string | null, o: { exitCode?: number; startedAt?: Date | null; endedAt: Date }) {
    await run(q, TASK_FINISH, [taskId, leaseId, status, msg, o.exitCode ?? null, o.startedAt ?? null, o.endedAt, this.c.clock.now()]);
  }

  /** A failed task with retries left: a new linked task, after the code's retries_delay. */
  private async retryFailed(q: Queryable, taskId: string) {
    const t = (
      await q.query<{
        project_id: string; code_id: string; code_name: string; code_revision_id: string; code_rev: number;
        retries_left: number; retries_delay: number; payload: string; priority: number; cluster: string;
        timeout: number; label: string | null; retry_count: number; hooks: Hooks | null;
      }>('SELECT * FROM tasks WHERE id = $1', [taskId])
    ).rows[0]!;
    const [id] = await this.tasks.insert(q, [
      {
        projectId: t.project_id,
        codeId: t.code_id,
        codeName: t.code_name,
        revisionId: t.code_revision_id,
        rev: t.code_rev,
        retries: t.retries_left - 1,
        retriesDelay: t.retries_delay,
        payload: t.payload,
        priority: t.priority,
        cluster: t.cluster,
        timeout: t.timeout,
        delay: t.retries_delay,
        label: t.label,
        originalTaskId: taskId,
        retryCount: t.retry_count + 1,
        hooks: t.hooks,
      },
    ]);
    await q.query('UPDATE tasks SET retry_task_id = $2 WHERE id = $1', [taskId, id]);
  }

  /**
   * Ends an offered or accepted lease without a run (Reject, an accept deadline passed, a
   * hand-back before start): the task goes back to the queue, no retry is spent. True when
   * it ended the lease.
   */
  async release(leaseId: string, attempt: number, runnerId: string | null, outcome: string, fence?: Fence): Promise<boolean> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const taskId = (await run<{ task_id: string }>(q, LEASE_RELEASE, [leaseId, attempt, runnerId, now, outcome])).rows[0]?.task_id;
      if (!taskId) return false;
      await run(q, TASK_RELEASE, [taskId, leaseId, now]);
      return true;
    });
  }

  /**
   * The lease sweeper (leader work): offers past their accept deadline go back to the
   * queue; accepted or running leases whose runner went silent past the lease TTL are
   * reclaimed — runner loss is not a task error: the task is requeued until the internal
   * budget is spent, then ends `killed` ("runner lost"); a task whose cancel was requested
   * ends `cancelled`. Returns what it did and the leases it ended.
   */
  async sweep(cfg: LeaseConfig, limit = 500, fence?: Fence): Promise<{ expiredOffers: number; reclaimed: number; killed: number; ended: string[] }> {
    const now = this.c.clock.now();
    const out = { expiredOffers: 0, reclaimed: 0, killed: 0, ended: [] as string[] };
    const due = await this.c.db.query<{ id: string; attempt: number; state: string }>(
      `SELECT id, attempt, state FROM task_leases WHERE ended_at IS NULL AND expires_at < $1 ORDER BY expires_at LIMIT $2`,
      [now, limit],
    );
    for (const l of due.rows) {
      if (l.state === 'offered') {
        if (await this.release(l.id, l.attempt, null, 'offer_expired', fence)) {
          out.expiredOffers++;
          out.ended.push(l.id);
        }
        continue;
      }
      const r = await this.reclaim(l.id, l.attempt, cfg, 'reclaimed', false, fence);
      if (r.ended) out.ended.push(l.id);
      if (r.result === 'requeued') out.reclaimed++;
      else if (r.result === 'ended') out.killed++;
    }
    return out;
  }

  /**
   * Takes a live lease away from its runner (runner lost, or handed back by a drain):
   * requeue within the internal budget, else end the task. Fenced by `expires_at < now`
   * unless `force`. `ended`: whether it ended the lease.
   */
  async reclaim(
    leaseId: string,
    attempt: number,
    cfg: LeaseConfig,
    outcome: 'reclaimed' | 'handed_back',
    force = false,
    fence?: Fence,
  ): Promise<{ result: 'requeued' | 'ended' | 'none'; ended: boolean }> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const lease = (
        await q.query<LeaseRow>(
          `SELECT * FROM task_leases WHERE id = $1 AND attempt = $2 AND ended_at IS NULL AND ($3 OR expires_at < $4)
           FOR UPDATE SKIP LOCKED`,
          [leaseId, attempt, force, now],
        )
      ).rows[0];
      if (!lease) return { result: 'none', ended: false };
      const task = (await run<TaskForOutcome>(q, TASK_LOCK, [lease.task_id])).rows[0];
      const why = outcome === 'handed_back' ? 'Handed back by a draining runner' : 'Runner lost: it went silent past the lease TTL';
      await run(q, LEASE_END, [lease.id, now, outcome, null, why]);
      if (!task || task.lease_id !== lease.id) return { result: 'none', ended: true };
      if (task.cancel_requested_at) {
        await this.finish(q, task.id, lease.id, 'cancelled', 'Cancelled by user', { endedAt: now });
        return { result: 'ended', ended: true };
      }
      const losses = task.runner_losses + (lease.state === 'running' ? 1 : 0);
      if (losses > cfg.runnerLossBudget) {
        await q.query('UPDATE tasks SET runner_losses = $2 WHERE id = $1', [task.id, losses]);
        await this.finish(q, task.id, lease.id, 'killed', `Runner lost ${losses} times; giving up (runner lost)`, { endedAt: now });
        return { result: 'ended', ended: true };
      }
      await run(q, TASK_REQUEUE, [task.id, losses, outcome === 'handed_back' ? 'Handed back by a draining runner; requeued' : 'Runner lost; requeued', now]);
      return { result: 'requeued', ended: true };
    });
  }

  /** Ends a lease whose runner stayed silent past its timeout: the task times out. True when it ended the lease. */
  async timeOut(leaseId: string, attempt: number, fence?: Fence): Promise<boolean> {
    const now = this.c.clock.now();
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const l = (
        await q.query<LeaseRow>('SELECT * FROM task_leases WHERE id = $1 AND attempt = $2 AND ended_at IS NULL FOR UPDATE', [leaseId, attempt])
      ).rows[0];
      if (!l) return false;
      await run(q, LEASE_END, [l.id, now, 'timeout', null, 'Timed out (enforced by the control plane)']);
      await this.finish(q, l.task_id, l.id, 'timeout', 'Timed out (enforced by the control plane)', { endedAt: now });
      return true;
    });
  }
}
