import type { StoreCtx, Page } from './ctx.ts';
import { pageSql } from './ctx.ts';
import type { Queryable } from './db.ts';
import type { TaskStatus } from './codes.ts';
import type { QuotasStore } from './quotas.ts';
import { run, statement } from './statements.ts';
import { ConflictError } from '../errors.ts';
import { readLog } from './executions.ts';
import type { Hooks } from './hooks.ts';

export const FINAL_STATUSES: readonly TaskStatus[] = ['complete', 'error', 'cancelled', 'killed', 'timeout'];

export interface Task {
  id: string;
  projectId: string;
  codeId: string;
  codeName: string;
  codeRevisionId: string;
  codeRev: number;
  status: TaskStatus;
  priority: number;
  cluster: string;
  timeout: number;
  delay: number;
  payload: string;
  label: string | null;
  msg: string | null;
  percent: number | null;
  scheduleId: string | null;
  originalTaskId: string | null;
  retryTaskId: string | null;
  retryCount: number;
  createdAt: Date;
  updatedAt: Date;
  eligibleAt: Date;
  startTime: Date | null;
  endTime: Date | null;
  logSize: number;
  exitCode: number | null;
  attempt: number;
  runnerLosses: number;
  runnerId: string | null;
  runTimes: number;
  /** Who hears of its outcome (store/hooks.ts), resolved when it was queued; null for no one. */
  hooks: Hooks | null;
}

/**
 * A tasks row as SELECT * reads it: the columns Task carries (the others stay in the
 * store), those of one word under Task's own names.
 */
export interface TaskRow
  extends Pick<Task, 'id' | 'status' | 'priority' | 'cluster' | 'timeout' | 'delay' | 'payload' | 'label' | 'msg' | 'percent' | 'attempt'> {
  project_id: string;
  code_id: string;
  code_name: string;
  code_revision_id: string;
  code_rev: number;
  schedule_id: string | null;
  original_task_id: string | null;
  retry_task_id: string | null;
  retry_count: number;
  created_at: Date;
  updated_at: Date;
  eligible_at: Date;
  start_time: Date | null;
  end_time: Date | null;
  log_size: number;
  exit_code: number | null;
  runner_losses: number;
  runner_id: string | null;
  run_times: number;
  hooks: Hooks | null;
}

export function toTask(r: TaskRow): Task {
  return {
    id: r.id,
    projectId: r.project_id,
    codeId: r.code_id,
    codeName: r.code_name,
    codeRevisionId: r.code_revision_id,
    codeRev: r.code_rev,
    status: r.status,
    priority: r.priority,
    cluster: r.cluster,
    timeout: r.timeout,
    delay: r.delay,
    payload: r.payload,
    label: r.label,
    msg: r.msg,
    percent: r.percent,
    scheduleId: r.schedule_id,
    originalTaskId: r.original_task_id,
    retryTaskId: r.retry_task_id,
    retryCount: r.retry_count,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    eligibleAt: r.eligible_at,
    startTime: r.start_time,
    endTime: r.end_time,
    logSize: r.log_size,
    exitCode: r.exit_code,
    attempt: r.attempt,
    runnerLosses: r.runner_losses,
    runnerId: r.runner_id,
    runTimes: r.run_times,
    hooks: r.hooks ?? null,
  };
}

/** A task to queue, its code already resolved to the revision it will run. */
export interface NewTask {
  projectId: string;
  codeId: string;
  codeName: string;
  revisionId: string;
  rev: number;
  retries: number;
  retriesDelay: number;
  payload: string;
  priority: number;
  cluster: string;
  timeout: number;
  delay: number;
  label: string | null;
  scheduleId?: string;
  scheduledFor?: Date;
  originalTaskId?: string;
  retryCount?: number;
  /** Its outcome hooks, resolved (store/hooks.ts resolveHooks); none when absent. */
  hooks?: Hooks | null;
}

export interface TaskFilter {
  codeName?: string;
  /** Only the tasks this schedule queued. */
  scheduleId?: string;
  statuses?: TaskStatus[];
  from?: Date;
  to?: Date;
}

/** Columns listed without the payload, which lists never carry. */
export const LIST_COLUMNS = `id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout,
  delay, label, msg, percent, schedule_id, original_task_id, retry_task_id, retry_count, created_at, updated_at,
  eligible_at, start_time, end_time, log_size, exit_code, attempt, runner_losses, runner_id, run_times, hooks`;

/**
 * A new task's values, queued at `now`, in the order the statement files take them
 * (queue-one.sql, queue-many.sql, queue-and-grant.sql, insert-tasks.sql): id, project_id,
 * code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout,
 * delay, payload, label, schedule_id, scheduled_for, original_task_id, retry_count,
 * retries_left, retries_delay, created_at, updated_at, eligible_at.
 */
export function taskValues(t: NewTask, id: string, now: Date): unknown[] {
  return [
    id, t.projectId, t.codeId, t.codeName, t.revisionId, t.rev, 'queued', t.priority, t.cluster, t.timeout,
    t.delay, t.payload, t.label, t.scheduleId ?? null, t.scheduledFor ?? null, t.originalTaskId ?? null,
    t.retryCount ?? 0, t.retries, t.retriesDelay, now, now, new Date(now.getTime() + t.delay * 1000),
    t.hooks ? JSON.stringify(t.hooks) : null,
  ];
}

/** Values of many tasks as one array per column, for the statements that take arrays. */
function columns(rows: unknown[][]): unknown[][] {
  return rows[0]!.map((_, c) => rows.map((v) => v[c]));
}

const QUEUE_ONE = statement('queue-one');
const QUEUE_MANY = statement('queue-many');
const INSERT_TASKS = statement('insert-tasks');
const CANCEL_QUEUED = statement('task-cancel-queued');

/** The one project of a batch (a request queues into one project; its owner's quota applies). */
function oneProject(tasks: NewTask[]): string {
  const projectId = tasks[0]!.projectId;
  if (tasks.some((t) => t.projectId !== projectId)) throw new Error('tasks queued together must belong to one project');
  return projectId;
}

export type CancelOutcome =
  | { kind: 'cancelled'; task: Task }
  | { kind: 'cancelling'; task: Task }
  | { kind: 'final'; task: Task };

/** Tasks: queueing, reading, cancelling, progress and retries. */
export class TasksStore {
  constructor(
    private readonly c: StoreCtx,
    readonly quotas: QuotasStore,
  ) {}

  /**
   * Inserts tasks as `queued` in one statement; all or none. Returns their ids in order.
   * No quota is checked or counted: for tasks the system queues on its own, or whose
   * quota the caller admitted (QuotasStore.admitQueued).
   */
  async insert(q: Queryable, tasks: NewTask[]): Promise<string[]> {
    if (tasks.length === 0) return [];
    const now = this.c.clock.now();
    const ids = tasks.map(() => this.c.ids());
    await run(q, INSERT_TASKS, columns(tasks.map((t, i) => taskValues(t, ids[i]!, now))));
    return ids;
  }

  /**
   * Queues tasks of one project, all or none, within its owner's queued-tasks quota
   * (QuotaExceededError, 429, when they would pass it). In the common case one statement
   * counts them in one of the owner's counters and inserts them; when that counter's share
   * of the limit is full, queueCounted.
   */
  async queue(tasks: NewTask[]): Promise<string[]> {
    if (tasks.length === 0) return [];
    const projectId = oneProject(tasks);
    const now = this.c.clock.now();
    const ids = tasks.map(() => this.c.ids());
    const values = tasks.map((t, i) => taskValues(t, ids[i]!, now));
    const head = [projectId, tasks.length, this.quotas.defaults.queuedTasks];
    const r =
      tasks.length === 1
        ? await run(this.c.db, QUEUE_ONE, [...head, ...values[0]!])
        : await run(this.c.db, QUEUE_MANY, [...head, ...columns(values)]);
    return r.rows.length > 0 ? ids : this.queueCounted(tasks);
  }

  /**
   * Queues tasks of one project after QuotasStore.admitQueued: the slow path of queue,
   * which looks at all the owner's counters and may recount their queued tasks exactly.
   */
  async queueCounted(tasks: NewTask[]): Promise<string[]> {
    const projectId = oneProject(tasks);
    const out = await this.c.db.tx(async (q) => {
      const refused = await this.quotas.admitQueued(q, projectId, tasks.length);
      return refused ? { refused } : { ids: await this.insert(q, tasks) };
    });
    if ('refused' in out) throw out.refused;
    return out.ids;
  }

  async list(projectId: string, f: TaskFilter, p: Page): Promise<Task[]> {
    const { limit, offset } = pageSql(p);
    const where = ['project_id = $1'];
    const params: unknown[] = [projectId];
    if (f.codeName !== undefined) where.push(`code_name = $${params.push(f.codeName)}`);
    if (f.scheduleId !== undefined) where.push(`schedule_id = $${params.push(f.scheduleId)}`);
    if (f.statuses && f.statuses.length > 0) where.push(`status = ANY($${params.push(f.statuses)}::text[])`);
    if (f.from) where.push(`created_at >= $${params.push(f.from)}`);
    if (f.to) where.push(`created_at <= $${params.push(f.to)}`);
    const r = await this.c.db.query<TaskRow>(
      `SELECT ${LIST_COLUMNS} FROM tasks WHERE ${where.join(' AND ')} ORDER BY id DESC
       LIMIT $${params.push(limit)} OFFSET $${params.push(offset)}`,
      params,
    );
    return r.rows.map(toTask);
  }

  async get(projectId: string, taskId: string): Promise<Task | undefined> {
    const r = (await this.c.db.query<TaskRow>('SELECT * FROM tasks WHERE project_id = $1 AND id = $2', [projectId, taskId]))
      .rows[0];
    return r && toTask(r);
  }

  /**
   * Why each of these tasks that is queued has not started, in the words a person reads in
   * its `msg`: delayed, its package paused, no runner in its cluster, at its package's or
   * project's limit of running tasks, offered and not started yet, or every slot busy. One
   * statement for a page of tasks; tasks that are not queued are left out.
   */
  async waitReasons(taskIds: readonly string[]): Promise<Map<string, string>> {
    const out = new Map<string, string>();
    if (taskIds.length === 0) return out;
    const now = this.c.clock.now();
    const r = await this.c.db.query<{
      id: string; cluster: string; eligible_at: Date; offered: boolean; paused: boolean; max_concurrency: number | null;
      max_running: number | null; runners: number; code_live: number; project_live: number;
    }>(
      `SELECT t.id, t.cluster, t.eligible_at, t.lease_id IS NOT NULL AS offered, c.paused, r.max_concurrency, p.max_running,
         (SELECT count(*)::int FROM runners rn JOIN clusters cl ON cl.id = rn.cluster_id
          WHERE cl.name = t.cluster AND cl.deleted_at IS NULL AND rn.connected AND NOT rn.draining) AS runners,
         (SELECT count(*)::int FROM task_leases l WHERE l.code_id = t.code_id AND l.ended_at IS NULL) AS code_live,
         (SELECT count(*)::int FROM task_leases l JOIN tasks lt ON lt.id = l.task_id
          WHERE lt.project_id = t.project_id AND l.ended_at IS NULL) AS project_live
       FROM tasks t JOIN codes c ON c.id = t.code_id JOIN code_revisions r ON r.id = c.latest_revision_id
       JOIN projects p ON p.id = t.project_id
       WHERE t.id = ANY($1::text[]) AND t.status = 'queued'`,
      [[...taskIds]],
    );
    for (const x of r.rows) {
      const cluster = JSON.stringify(x.cluster);
      out.set(
        x.id,
        x.offered
          ? 'offered to a runner, starting'
          : x.eligible_at > now
            ? `delayed until ${x.eligible_at.toISOString()}`
            : x.paused
              ? "waiting: the code package's task queue is paused"
              : x.runners === 0
                ? `waiting: no runner is connected in cluster ${cluster}`
                : x.max_concurrency !== null && x.code_live >= x.max_concurrency
                  ? `waiting: the code package is at its max_concurrency (${x.max_concurrency} running)`
                  : x.max_running !== null && x.project_live >= x.max_running
                    ? `waiting: the project is at its limit of ${x.max_running} running tasks`
                    : `waiting for a free runner slot in cluster ${cluster}`,
      );
    }
    return out;
  }

  /**
   * The task's log, its current attempt's: both streams interleaved in the order they
   * arrived, or one stream (`stdout`/`stderr`) alone (ExecutionsStore.log reads any attempt's).
   */
  async log(taskId: string, stream?: 'stdout' | 'stderr'): Promise<Buffer> {
    return readLog(this.c.db, taskId, null, stream);
  }

  /**
   * Cancels a task. A queued task is cancelled at once; a running one is marked for its
   * runner to stop (its final state comes from the runner); a final state is never
   * overwritten. Undefined when there is no such task.
   */
  async cancel(projectId: string, taskId: string): Promise<CancelOutcome | undefined> {
    // A task offered to a runner (queued, with a lease) is like a running one: its runner
    // is told, and the lease's end decides (a lease released unrun ends it `cancelled`).
    // Between the two statements a lease may come or go: then both again.
    for (let attempt = 1; ; attempt++) {
      const now = this.c.clock.now();
      // A cancelled queued task frees its place in the owner's queued-tasks quota at once.
      const done = await run<TaskRow>(this.c.db, CANCEL_QUEUED, [projectId, taskId, now]);
      if (done.rows[0]) return { kind: 'cancelled', task: toTask(done.rows[0]) };
      const leased = await this.c.db.query<TaskRow>(
        `UPDATE tasks SET cancel_requested_at = coalesce(cancel_requested_at, $3), updated_at = $3
         WHERE project_id = $1 AND id = $2 AND (status = 'running' OR (status = 'queued' AND lease_id IS NOT NULL)) RETURNING *`,
        [projectId, taskId, now],
      );
      if (leased.rows[0]) return { kind: 'cancelling', task: toTask(leased.rows[0]) };
      const t = await this.get(projectId, taskId);
      if (!t) return undefined;
      if (t.status !== 'queued' && t.status !== 'running') return { kind: 'final', task: t };
      if (attempt >= 3) throw new ConflictError('The task was offered and released again while it was being cancelled; cancel it again');
    }
  }

  /** Sets percent and/or msg of a queued or running task; the task after, or undefined. */
  async setProgress(projectId: string, taskId: string, percent: number | undefined, msg: string | undefined): Promise<Task | undefined> {
    const r = await this.c.db.query<TaskRow>(
      `UPDATE tasks SET percent = coalesce($3, percent), msg = coalesce($4, msg), updated_at = $5
       WHERE project_id = $1 AND id = $2 AND status IN ('queued', 'running') RETURNING *`,
      [projectId, taskId, percent ?? null, msg ?? null, this.c.clock.now()],
    );
    return r.rows[0] && toTask(r.rows[0]);
  }

  /**
   * Queues a new task that re-runs a finished one, on the code's latest revision when the
   * package still exists, and links the two. Undefined if the task is not final. The new
   * task counts against the owner's queued-tasks quota (QuotaExceededError past it).
   */
  async retry(projectId: string, taskId: string, delay: number): Promise<string | undefined> {
    const out = await this.c.db.tx(async (q): Promise<{ id: string } | { refused: Error } | undefined> => {
      const t = (
        await q.query<TaskRow & { retries_left: number; retries_delay: number }>(
          `SELECT * FROM tasks WHERE project_id = $1 AND id = $2 AND status = ANY($3::text[]) FOR UPDATE`,
          [projectId, taskId, FINAL_STATUSES],
        )
      ).rows[0];
      if (!t) return undefined;
      const latest = (
        await q.query<{ id: string; rev: number; retries: number; retries_delay: number }>(
          `SELECT r.id, r.rev, r.retries, r.retries_delay FROM codes c JOIN code_revisions r ON r.id = c.latest_revision_id
           WHERE c.id = $1 AND c.deleted_at IS NULL`,
          [t.code_id],
        )
      ).rows[0];
      const refused = await this.quotas.admitQueued(q, projectId, 1);
      if (refused) return { refused };
      const [id] = await this.insert(q, [
        {
          projectId,
          codeId: t.code_id,
          codeName: t.code_name,
          revisionId: latest?.id ?? t.code_revision_id,
          rev: latest?.rev ?? t.code_rev,
          retries: latest?.retries ?? t.retries_left,
          retriesDelay: latest?.retries_delay ?? t.retries_delay,
          payload: t.payload,
          priority: t.priority,
          cluster: t.cluster,
          timeout: t.timeout,
          delay,
          label: t.label,
          originalTaskId: t.id,
          retryCount: t.retry_count + 1,
          hooks: t.hooks,
        },
      ]);
      await q.query('UPDATE tasks SET retry_task_id = $2 WHERE id = $1', [t.id, id]);
      return { id: id! };
    });
    // Thrown after the commit, which keeps the recount admitQueued may have made.
    if (out && 'refused' in out) throw out.refused;
    return out?.id;
  }

  /** Clusters with a queued task whose eligible time fell in (from, to] (delays that just passed). */
  async clustersEligibleBetween(from: Date, to: Date): Promise<string[]> {
    return (
      await this.c.db.query<{ name: string }>(
        `SELECT n.name FROM (SELECT name FROM clusters UNION SELECT 'default') n
         WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.status = 'queued' AND t.cluster = n.name AND t.eligible_at > $1 AND t.eligible_at <= $2)`,
        [from, to],
      )
    ).rows.map((r) => r.name);
  }
}
