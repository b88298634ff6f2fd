import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../lib/logger.ts';
import type { ControlPlaneMetrics } from '../../control-plane/metrics.ts';
import type { Store } from '../../control-plane/store/index.ts';

export const DAY = 86_400_000;

/** A logger at debug level whose lines are kept, parsed, in `lines`. */
export function captureLog(onLine?: (line: Record<string, any>) => void): { log: Logger; lines: Record<string, any>[] } {
  const lines: Record<string, any>[] = [];
  const dest = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString().split('\n')) {
        if (!l) continue;
        const line = JSON.parse(l) as Record<string, any>;
        lines.push(line);
        onLine?.(line);
      }
      cb();
    },
  });
  return { log: createLogger({ level: 'debug', name: 'test', destination: dest }), lines };
}

/** gantry_retention_deleted_total by kind. */
export async function deletedByKind(metrics: ControlPlaneMetrics): Promise<Record<string, number>> {
  const out: Record<string, number> = {};
  for (const v of (await metrics.retentionDeleted.get()).values) out[String(v.labels.kind)] = v.value;
  return out;
}

/**
 * Tasks written as retention finds them: queued through the store, then given a status, an
 * end time, log chunks and leases directly (a runner is not what is under test here).
 */
export async function taskWorld(store: Store, tag: string) {
  const u = await store.accounts.createUser(`ret-${tag}-${Math.random()}@example.com`);
  const p = await store.accounts.createProject(u.id, 'retention');
  const code = await store.codes.upload(p.id, `c-${tag}`, { image: 'busybox' });
  const queue = async (n = 1): Promise<string[]> =>
    store.tasks.queue(
      Array.from({ length: n }, (_, i) => ({
        projectId: p.id, codeId: code.id, codeName: code.name, revisionId: code.latestRevisionId, rev: code.rev,
        retries: 0, retriesDelay: 0, payload: `${tag}-${i}`, priority: 0, cluster: 'default', timeout: 60, delay: 0, label: null,
      })),
    );
  /** Gives task `id` a status, an end (final statuses), `chunks` log chunks and `leases` leases (the last live if `liveLease`). */
  const shape = async (id: string, o: { status: string; endedAt?: Date | null; chunks?: number; leases?: number; liveLease?: boolean }) => {
    const leases = o.leases ?? 1;
    const at = o.endedAt ?? store.clock.now();
    for (let a = 1; a <= leases; a++) {
      const live = o.liveLease && a === leases;
      await store.db.query(
        `INSERT INTO task_leases (id, task_id, attempt, runner_id, code_id, granted_at, expires_at, ended_at, state, outcome)
         VALUES ($1, $2, $3, 'r1', $4, $5, $5, $6, $7, $8)`,
        [`${id}-l${a}`, id, a, code.id, at, live ? null : at, live ? 'running' : 'done', live ? null : 'succeeded'],
      );
    }
    for (let c = 0; c < (o.chunks ?? 0); c++) {
      await store.db.query('INSERT INTO task_log_chunks (task_id, attempt, byte_offset, stream, data) VALUES ($1, $2, $3, 1, $4)', [id, leases, c * 4, Buffer.from('log\n')]);
    }
    await store.db.query('UPDATE tasks SET status = $2, end_time = $3, attempt = $4, log_size = $5 WHERE id = $1', [
      id, o.status, o.endedAt === undefined ? null : o.endedAt, leases, (o.chunks ?? 0) * 4,
    ]);
  };
  /** Retries finished task `id` as the API does (a new queued task; the original names it). */
  const retry = async (id: string): Promise<string> => (await store.tasks.retry(p.id, id, 0))!;
  return { project: p, code, queue, shape, retry };
}

/** Ids of the tasks that exist among `ids`. */
export async function existing(store: Store, ids: string[]): Promise<string[]> {
  return (await store.db.query<{ id: string }>('SELECT id FROM tasks WHERE id = ANY($1::text[]) ORDER BY id', [ids])).rows.map((r) => r.id);
}

/** Log chunks and leases per task among `ids` (tasks without any are absent). */
export async function rowsOf(store: Store, ids: string[]): Promise<{ chunks: Record<string, number>; leases: Record<string, number> }> {
  const count = async (table: string) =>
    Object.fromEntries(
      (
        await store.db.query<{ task_id: string; n: number }>(`SELECT task_id, count(*)::int AS n FROM ${table} WHERE task_id = ANY($1::text[]) GROUP BY task_id`, [ids])
      ).rows.map((r) => [r.task_id, Number(r.n)]),
    ) as Record<string, number>;
  return { chunks: await count('task_log_chunks'), leases: await count('task_leases') };
}

/** Tasks whose original_task_id or retry_task_id names a task that does not exist. */
export async function danglingLinks(store: Store): Promise<number> {
  const r = await store.db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM tasks t
     WHERE (t.original_task_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.id = t.original_task_id))
        OR (t.retry_task_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM tasks o WHERE o.id = t.retry_task_id))`,
  );
  return Number(r.rows[0]!.n);
}
