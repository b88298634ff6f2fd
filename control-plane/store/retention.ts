import type { StoreCtx } from './ctx.ts';
import type { Queryable } from './db.ts';
import { checkFence, type Fence } from './fence.ts';

/**
 * Retention: deleting what is finished and old, a bounded batch per transaction (the
 * leader's retention job, scheduler/retention.ts, calls these in a loop with a pause between
 * batches). Nothing live is ever deleted: a task goes only when it is finished (complete,
 * error, cancelled, killed, timeout), ended before the cutoff, holds no live lease, and so
 * does every task of its retry chain; the chain then goes whole, in one transaction with
 * every log chunk and lease of its tasks, so no kept task names a deleted one and no task is
 * ever left with part of its log.
 */

/** Where a pass over finished tasks has got to: the last task it looked at, in (end_time, id) order. */
export interface TaskCursor {
  endTime: Date;
  id: string;
}

/** Rows one batch deleted, and the statements that did it. */
export interface BatchResult {
  /** Rows deleted, by kind (the label of gantry_retention_deleted_total). */
  deleted: Record<string, number>;
  /** DELETE statements that ran, and the most rows one of them deleted. */
  statements: number;
  maxRows: number;
}

export interface TaskBatch extends BatchResult {
  /** No finished task that ended before the cutoff is left past the cursor: the pass is over. */
  done: boolean;
  /** Where the next batch starts (undefined: from the oldest). */
  next: TaskCursor | undefined;
}

/**
 * A table whose old rows go by one time column, `where` saying which rows may go at all:
 * schedule history. (Recorded machine stats, with no single-column key and too many rows to
 * read in time order, go by SeriesStore.deleteExpired.)
 */
export interface ExpiringRows {
  /** The metric label and the log's name for these rows. */
  readonly kind: string;
  readonly table: string;
  /** A unique column (the rows to delete are chosen by it). */
  readonly key: string;
  /** The time column the cutoff applies to; an index on it (partial on `where`) keeps a batch from scanning. */
  readonly time: string;
  /** Which rows may go, as SQL over the table's columns (never a live row). */
  readonly where: string;
}

/**
 * Finished schedules (complete or cancelled: they fire no more) by the time they finished,
 * once none of the tasks they fired is kept: a kept task never names a deleted schedule.
 * The periods a schedule fired are its tasks (unique on schedule and period), which go with
 * the tasks; a period once passed is never fired again, with or without its task.
 */
export const SCHEDULE_HISTORY: ExpiringRows = {
  kind: 'schedules',
  table: 'schedules',
  key: 'id',
  time: 'updated_at',
  where: `status IN ('complete', 'cancelled') AND NOT EXISTS (SELECT 1 FROM tasks t WHERE t.schedule_id = schedules.id)`,
};

/**
 * The recorded queue load (migration 016), by the instant it was recorded: the
 * per-interval series and their ticks (GANTRY_RETENTION_QUEUE_LOAD_DAYS), and the hourly
 * roll-up (GANTRY_RETENTION_QUEUE_LOAD_HOURLY_DAYS). Rows go by their physical address
 * (`ctid`): the series tables have composite keys, and each has a BRIN index on its time.
 */
export const QUEUE_LOAD_SERIES: readonly ExpiringRows[] = [
  { kind: 'queue_load', table: 'queue_load', key: 'ctid', time: 'at', where: 'true' },
  { kind: 'cluster_load', table: 'cluster_load', key: 'ctid', time: 'at', where: 'true' },
  { kind: 'queue_load_ticks', table: 'queue_load_ticks', key: 'at', time: 'at', where: 'true' },
];
export const QUEUE_LOAD_HOURLY: readonly ExpiringRows[] = [
  { kind: 'queue_load_hourly', table: 'queue_load_hourly', key: 'ctid', time: 'hour', where: 'true' },
  { kind: 'cluster_load_hourly', table: 'cluster_load_hourly', key: 'ctid', time: 'hour', where: 'true' },
  { kind: 'queue_load_hours', table: 'queue_load_hours', key: 'hour', time: 'hour', where: 'true' },
];

// The list must read as the partial index's predicate (migration 013), so the planner uses it.
const FINISHED = `status IN ('complete', 'error', 'cancelled', 'killed', 'timeout')`;
const FINAL = new Set(['complete', 'error', 'cancelled', 'killed', 'timeout']);

interface Member {
  id: string;
  status: string;
  end_time: Date | null;
  original_task_id: string | null;
  retry_task_id: string | null;
  live: boolean;
}

/** A task with the tasks it is linked to, as read: its rows, and the ids its links name. */
async function readLinked(q: Queryable, ids: string[]): Promise<Member[]> {
  return (
    await q.query<Member>(
      `SELECT t.id, t.status, t.end_time, t.original_task_id, t.retry_task_id,
         EXISTS (SELECT 1 FROM task_leases l WHERE l.task_id = t.id AND l.ended_at IS NULL) AS live
       FROM tasks t WHERE t.id = ANY($1::text[]) OR t.original_task_id = ANY($1::text[])`,
      [ids],
    )
  ).rows;
}

/**
 * The retry chains of `seeds`: every task reachable through original_task_id, retry_task_id
 * or being a retry of one, as components (each a list of ids, in the order of the seed that
 * found it first). Links to tasks that do not exist are ignored.
 */
async function chainsOf(q: Queryable, seeds: string[]): Promise<{ members: Map<string, Member>; chains: string[][] }> {
  const members = new Map<string, Member>();
  const retriesOf = new Map<string, string[]>();
  const asked = new Set<string>();
  let frontier = [...new Set(seeds)];
  while (frontier.length > 0) {
    const round = new Set(frontier);
    for (const id of frontier) asked.add(id);
    for (const m of await readLinked(q, frontier)) {
      members.set(m.id, m);
      if (m.original_task_id && round.has(m.original_task_id)) {
        const list = retriesOf.get(m.original_task_id) ?? [];
        if (!list.includes(m.id)) list.push(m.id);
        retriesOf.set(m.original_task_id, list);
      }
    }
    // Next: every member, and every task a member names, whose links were not asked yet.
    const next = new Set<string>();
    for (const m of members.values()) for (const id of [m.id, m.original_task_id, m.retry_task_id]) if (id && !asked.has(id)) next.add(id);
    frontier = [...next];
  }
  const chains: string[][] = [];
  const placed = new Set<string>();
  for (const seed of seeds) {
    if (placed.has(seed) || !members.has(seed)) continue;
    const chain: string[] = [];
    const stack = [seed];
    while (stack.length > 0) {
      const id = stack.pop()!;
      const m = members.get(id);
      if (!m || placed.has(id)) continue;
      placed.add(id);
      chain.push(id);
      for (const n of [m.original_task_id, m.retry_task_id, ...(retriesOf.get(id) ?? [])]) if (n && !placed.has(n)) stack.push(n);
    }
    chains.push(chain);
  }
  return { members, chains };
}

/** A chain may go: every task in it finished before the cutoff and holds no live lease. */
const deletable = (chain: string[], members: Map<string, Member>, cutoff: Date) =>
  chain.every((id) => {
    const m = members.get(id)!;
    return FINAL.has(m.status) && m.end_time !== null && m.end_time < cutoff && !m.live;
  });

/** Counts rows of `table` per task among `ids`. */
async function countByTask(q: Queryable, table: string, ids: string[]): Promise<Map<string, number>> {
  const r = await q.query<{ task_id: string; n: number }>(
    `SELECT task_id, count(*)::int AS n FROM ${table} WHERE task_id = ANY($1::text[]) GROUP BY task_id`,
    [ids],
  );
  return new Map(r.rows.map((x) => [x.task_id, Number(x.n)]));
}

/** Deletes the rows of `table` whose `column` is among `ids`, at most `limit` per statement. */
async function deleteLimited(q: Queryable, table: string, column: string, ids: string[], limit: number, out: BatchResult, kind: string) {
  for (;;) {
    const r = await q.query(
      `DELETE FROM ${table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM ${table} WHERE ${column} = ANY($1::text[]) LIMIT $2))`,
      [ids, limit],
    );
    if (r.rowCount > 0) {
      out.statements++;
      out.maxRows = Math.max(out.maxRows, r.rowCount);
      out.deleted[kind] = (out.deleted[kind] ?? 0) + r.rowCount;
    }
    if (r.rowCount < limit) return;
  }
}

export class RetentionStore {
  constructor(private readonly c: StoreCtx) {}

  /**
   * One batch of finished tasks that ended before `cutoff`, after `after` in (end_time, id)
   * order: at most `limit` of them are looked at, their retry chains found, and the chains
   * that may go are deleted whole — log chunks, leases, then the tasks — while the batch
   * stays within `limit` rows in all (a single chain with more rows goes alone); every
   * statement deletes at most `limit` rows. One transaction, fenced: a batch is all done or
   * not at all, and a stale leader's batch is refused.
   */
  async deleteFinishedTasks(cutoff: Date, limit: number, after: TaskCursor | undefined, fence?: Fence): Promise<TaskBatch> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const out: TaskBatch = { deleted: { tasks: 0, log_chunks: 0, leases: 0 }, statements: 0, maxRows: 0, done: true, next: after };
      const seeds = (
        await q.query<{ id: string; end_time: Date }>(
          after
            ? `SELECT id, end_time FROM tasks WHERE ${FINISHED} AND end_time < $1 AND (end_time, id) > ($3::timestamptz, $4::text)
               ORDER BY end_time, id LIMIT $2`
            : `SELECT id, end_time FROM tasks WHERE ${FINISHED} AND end_time < $1 ORDER BY end_time, id LIMIT $2`,
          after ? [cutoff, limit, after.endTime, after.id] : [cutoff, limit],
        )
      ).rows;
      if (seeds.length === 0) return out;
      const last = seeds[seeds.length - 1]!;
      out.done = seeds.length < limit;
      out.next = { endTime: last.end_time, id: last.id };

      // Read without locks first: chains with a live task are left alone without holding them.
      const first = await chainsOf(
        q,
        seeds.map((s) => s.id),
      );
      const candidates = first.chains.filter((c) => deletable(c, first.members, cutoff));
      if (candidates.length === 0) return out;
      // Lock them (retrying a finished task locks it too, so no retry is added under us), then
      // read again: a chain that changed meanwhile (a retry queued) is left for a later pass.
      const ids = candidates.flat();
      await q.query('SELECT id FROM tasks WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE', [ids]);
      const again = await chainsOf(q, ids);
      const same = new Set(again.chains.filter((c) => deletable(c, again.members, cutoff)).map((c) => [...c].sort().join('\n')));
      const chains = candidates.filter((c) => same.has([...c].sort().join('\n')));
      if (chains.length === 0) return out;

      // Within the batch's rows: whole chains, in the order their oldest task was found.
      const all = chains.flat();
      const chunks = await countByTask(q, 'task_log_chunks', all);
      const leases = await countByTask(q, 'task_leases', all);
      const rows = (id: string) => 1 + (chunks.get(id) ?? 0) + (leases.get(id) ?? 0);
      const take: string[] = [];
      let budget = 0;
      for (const c of chains) {
        const n = c.reduce((s, id) => s + rows(id), 0);
        if (take.length > 0 && budget + n > limit) break;
        take.push(...c);
        budget += n;
      }
      await deleteLimited(q, 'task_log_chunks', 'task_id', take, limit, out, 'log_chunks');
      await deleteLimited(q, 'task_leases', 'task_id', take, limit, out, 'leases');
      await deleteLimited(q, 'tasks', 'id', take, limit, out, 'tasks');
      // Chains left out for the budget are looked at again by the next batch, from this one's start.
      if (take.length < all.length) {
        out.done = false;
        out.next = after;
      }
      return out;
    });
  }

  /**
   * One batch of `spec`'s rows older than `cutoff`: at most `limit`, in one fenced
   * statement. The rows are chosen first, as an array (= ANY of an array is an index or TID
   * lookup, where IN over a subquery may join by scanning the table).
   */
  async deleteExpired(spec: ExpiringRows, cutoff: Date, limit: number, fence?: Fence): Promise<BatchResult> {
    return this.c.db.tx(async (q) => {
      await checkFence(q, fence);
      const r = await q.query(
        `DELETE FROM ${spec.table} WHERE ${spec.key} = ANY(ARRAY(
           SELECT ${spec.key} FROM ${spec.table} WHERE ${spec.where} AND ${spec.time} < $1
           ORDER BY ${spec.time} LIMIT $2 FOR UPDATE SKIP LOCKED))`,
        [cutoff, limit],
      );
      return { deleted: { [spec.kind]: r.rowCount }, statements: r.rowCount > 0 ? 1 : 0, maxRows: r.rowCount };
    });
  }
}
