import type { StoreCtx, Page } from './ctx.ts';
import { pageSql } from './ctx.ts';
import type { TaskStatus } from './codes.ts';
import type { QuotasStore } from './quotas.ts';
import { toTask, LIST_COLUMNS, type Task, type TaskRow } from './tasks.ts';
import type { QuotaExceededError } from '../errors.ts';

/**
 * Requeueing finished tasks in bulk (POST .../queue/requeue-jobs): every matching task
 * becomes a new linked task, as retry makes one (original_task_id and retry_task_id, the
 * code's latest revision, its retries), all in one transaction. Only the last task of each
 * retry chain matches (one whose retry_task_id is empty), so a requeue asked twice does not
 * run the same work twice.
 */

/** Which finished tasks to requeue; each list matches any of its values, lists combine with AND. */
export interface RequeueFilter {
  statuses: TaskStatus[];
  /** Ended within [endedFrom, endedTo]. */
  endedFrom?: Date;
  endedTo?: Date;
  taskIds?: string[];
  codeIds?: string[];
  codeNames?: string[];
  categories?: string[];
}

export type RequeueOutcome =
  | { kind: 'requeued'; requeueId: string; ids: string[] }
  | { kind: 'too_many'; matched: number }
  | { kind: 'refused'; error: QuotaExceededError };

/** The matching tasks as a FROM clause over tasks `t`, their codes `c` and latest revisions `lr`, with its parameters. */
function matching(projectId: string, f: RequeueFilter): { from: string; params: unknown[] } {
  const params: unknown[] = [projectId, f.statuses];
  const where = ['t.project_id = $1', 't.status = ANY($2::text[])', 't.retry_task_id IS NULL'];
  if (f.endedFrom) where.push(`t.end_time >= $${params.push(f.endedFrom)}`);
  if (f.endedTo) where.push(`t.end_time <= $${params.push(f.endedTo)}`);
  if (f.taskIds?.length) where.push(`t.id = ANY($${params.push(f.taskIds)}::text[])`);
  if (f.codeIds?.length) where.push(`t.code_id = ANY($${params.push(f.codeIds)}::text[])`);
  if (f.codeNames?.length) where.push(`c.name = ANY($${params.push(f.codeNames)}::text[])`);
  if (f.categories?.length) where.push(`lr.category = ANY($${params.push(f.categories)}::text[])`);
  return { from: `tasks t JOIN codes c ON c.id = t.code_id JOIN code_revisions lr ON lr.id = c.latest_revision_id WHERE ${where.join(' AND ')}`, params };
}

/**
 * The new tasks, one per original (in the order given), as retry makes them (TasksStore.retry):
 * the package's latest revision and its retries when it still exists, else the task's own;
 * the payload, cluster, timeout, label and hooks of the original, its priority unless $3 gives one.
 * $1 originals, $2 new ids, $3 priority or null, $4 now, $5 the requeue's id.
 */
const REQUEUE_INSERT = `
INSERT INTO tasks (id, project_id, code_id, code_name, code_revision_id, code_rev, status, priority, cluster, timeout,
  delay, payload, label, original_task_id, retry_count, retries_left, retries_delay, created_at, updated_at, eligible_at, requeue_id, hooks)
SELECT x.id, t.project_id, t.code_id, t.code_name,
  CASE WHEN c.deleted_at IS NULL THEN lr.id ELSE t.code_revision_id END,
  CASE WHEN c.deleted_at IS NULL THEN lr.rev ELSE t.code_rev END,
  'queued', coalesce($3::smallint, t.priority), t.cluster, t.timeout, 0, t.payload, t.label, t.id, t.retry_count + 1,
  CASE WHEN c.deleted_at IS NULL THEN lr.retries ELSE t.retries_left END,
  CASE WHEN c.deleted_at IS NULL THEN lr.retries_delay ELSE t.retries_delay END,
  $4, $4, $4, $5, t.hooks
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS x(original, id, n)
JOIN tasks t ON t.id = x.original JOIN codes c ON c.id = t.code_id JOIN code_revisions lr ON lr.id = c.latest_revision_id
ORDER BY x.n`;

export class RequeueStore {
  constructor(
    private readonly c: StoreCtx,
    private readonly quotas: QuotasStore,
  ) {}

  /**
   * Requeues at most `limit` matching tasks of the project, optionally at `priority`; more
   * matches requeue nothing and say how many matched. The new tasks count against the
   * owner's queued-tasks quota, all or none.
   */
  async requeue(projectId: string, f: RequeueFilter, limit: number, priority?: number): Promise<RequeueOutcome> {
    const { from, params } = matching(projectId, f);
    const now = this.c.clock.now();
    return this.c.db.tx(async (q): Promise<RequeueOutcome> => {
      // Ids only: a task's payload (up to 64 KiB) never leaves the database.
      const found = await q.query<{ id: string }>(`SELECT t.id FROM ${from} ORDER BY t.id LIMIT $${params.length + 1} FOR UPDATE OF t`, [
        ...params,
        limit + 1,
      ]);
      if (found.rows.length > limit) {
        const n = await q.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${from}`, params);
        return { kind: 'too_many', matched: Number(n.rows[0]!.n) };
      }
      const requeueId = this.c.ids();
      if (found.rows.length === 0) return { kind: 'requeued', requeueId, ids: [] };
      const refused = await this.quotas.admitQueued(q, projectId, found.rows.length);
      if (refused) return { kind: 'refused', error: refused };
      const originals = found.rows.map((r) => r.id);
      const ids = originals.map(() => this.c.ids());
      await q.query(REQUEUE_INSERT, [originals, ids, priority ?? null, now, requeueId]);
      await q.query('UPDATE tasks o SET retry_task_id = x.id FROM unnest($1::text[], $2::text[]) AS x(original, id) WHERE o.id = x.original', [
        originals,
        ids,
      ]);
      return { kind: 'requeued', requeueId, ids };
    });
  }

  /** The clusters the matching tasks ran in (the caller checks the user may still queue onto them). */
  async clustersOf(projectId: string, f: RequeueFilter): Promise<string[]> {
    const { from, params } = matching(projectId, f);
    return (await this.c.db.query<{ cluster: string }>(`SELECT DISTINCT t.cluster FROM ${from} ORDER BY 1`, params)).rows.map((r) => r.cluster);
  }

  /** A page of the tasks one requeue made, in the order they were made, and how many it made. */
  async made(projectId: string, requeueId: string, p: Page): Promise<{ count: number; tasks: Task[] }> {
    const { limit, offset } = pageSql(p);
    const [rows, count] = await Promise.all([
      this.c.db.query<TaskRow>(
        `SELECT ${LIST_COLUMNS} FROM tasks WHERE requeue_id = $1 AND project_id = $2 ORDER BY id LIMIT $3 OFFSET $4`,
        [requeueId, projectId, limit, offset],
      ),
      this.c.db.query<{ n: number }>('SELECT count(*)::int AS n FROM tasks WHERE requeue_id = $1 AND project_id = $2', [requeueId, projectId]),
    ]);
    return { count: Number(count.rows[0]!.n), tasks: rows.rows.map(toTask) };
  }
}
