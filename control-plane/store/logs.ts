import { crc32 } from '../../lib/crc32.ts';
import type { StoreCtx } from './ctx.ts';

export interface AppendResult {
  /** Everything below this offset is stored; the runner resends from here. */
  committed: number;
  /** The lease is unknown, not this runner's, or not the task's current attempt. */
  stop: boolean;
}

/**
 * Task logs as the runner's log stream delivers them: chunks at byte offsets of the
 * attempt's combined log. Appends are contiguous (a chunk must start at the committed
 * offset); a duplicate is acknowledged, a gap is answered with the committed offset so the
 * runner resends. The final frame's length and CRC-32 are checked against what is stored.
 */
export class LogsStore {
  constructor(private readonly c: StoreCtx) {}

  /**
   * The task a log frame belongs to: the lease's, while the lease is the task's current
   * attempt. `pending` while the lease is still offered (its Accept has not been processed
   * yet: the log stream can overtake the control stream); undefined when stale or unknown.
   */
  private async current(leaseId: string, attempt: number, runnerId: string) {
    const r = await this.c.db.query<{ task_id: string; log_size: number; log_complete: boolean; state: string }>(
      `SELECT t.id AS task_id, t.log_size, t.log_complete, l.state FROM task_leases l JOIN tasks t ON t.id = l.task_id
       WHERE l.id = $1 AND l.attempt = $2 AND l.runner_id = $3 AND t.attempt = l.attempt`,
      [leaseId, attempt, runnerId],
    );
    const row = r.rows[0];
    if (row?.state === 'offered') return 'pending' as const;
    return row;
  }

  async append(leaseId: string, attempt: number, runnerId: string, offset: number, stream: number, data: Uint8Array): Promise<AppendResult> {
    const cur = await this.current(leaseId, attempt, runnerId);
    if (cur === 'pending') return { committed: 0, stop: false };
    if (!cur) return { committed: 0, stop: true };
    if (offset !== cur.log_size || data.length === 0) return { committed: cur.log_size, stop: false };
    return this.c.db.tx(async (q) => {
      const upd = await q.query<{ log_size: number }>(
        'UPDATE tasks SET log_size = log_size + $3 WHERE id = $1 AND log_size = $2 RETURNING log_size',
        [cur.task_id, offset, data.length],
      );
      if (!upd.rows[0]) {
        const now = await q.query<{ log_size: number }>('SELECT log_size FROM tasks WHERE id = $1', [cur.task_id]);
        return { committed: now.rows[0]?.log_size ?? 0, stop: false };
      }
      await q.query('INSERT INTO task_log_chunks (task_id, byte_offset, stream, data) VALUES ($1, $2, $3, $4)', [
        cur.task_id,
        offset,
        stream,
        data,
      ]);
      return { committed: upd.rows[0].log_size, stop: false };
    });
  }

  /**
   * The final frame: when all `totalBytes` are stored and their CRC-32 matches, the log is
   * complete. On a mismatch the stored log is dropped and the runner resends it whole.
   */
  async finish(leaseId: string, attempt: number, runnerId: string, totalBytes: number, crc: number) {
    const cur = await this.current(leaseId, attempt, runnerId);
    if (cur === 'pending') return { committed: 0, stop: false, complete: false };
    if (!cur) return { committed: 0, stop: true, complete: false };
    if (cur.log_complete) return { committed: cur.log_size, stop: false, complete: true };
    if (cur.log_size !== totalBytes) return { committed: cur.log_size, stop: false, complete: false };
    const chunks = await this.c.db.query<{ data: Uint8Array }>(
      'SELECT data FROM task_log_chunks WHERE task_id = $1 ORDER BY byte_offset',
      [cur.task_id],
    );
    let c = 0;
    for (const ch of chunks.rows) c = crc32(ch.data, c);
    if (c !== crc) {
      await this.c.db.tx(async (q) => {
        await q.query('DELETE FROM task_log_chunks WHERE task_id = $1', [cur.task_id]);
        await q.query('UPDATE tasks SET log_size = 0 WHERE id = $1', [cur.task_id]);
      });
      return { committed: 0, stop: false, complete: false };
    }
    await this.c.db.query('UPDATE tasks SET log_complete = true WHERE id = $1', [cur.task_id]);
    return { committed: totalBytes, stop: false, complete: true };
  }
}
