import { crc32 } from '../../lib/crc32.ts';
import type { StoreCtx } from './ctx.ts';

/** One frame of a runner's log stream, as the store sees it. */
export interface LogWrite {
  leaseId: string;
  attempt: number;
  offset: number;
  stream: number;
  data: Uint8Array;
  /** The final frame: the whole log's length and CRC-32. */
  final?: { totalBytes: number; crc: number };
}

export interface LogAckResult {
  /** Everything below this offset is stored; the runner resends from here. */
  committed: number;
  /** The lease is unknown, not this runner's, or not the task's current attempt. */
  stop: boolean;
  /** The final frame matched: the log is whole. */
  complete: boolean;
}

interface Cursor {
  taskId: string;
  attempt: number;
  /** The stored size when read (the compare of the compare-and-set). */
  was: number;
  size: number;
  crc: number;
  complete: boolean;
  dirty: boolean;
  reset: boolean;
}

/**
 * Task logs as the runner's log stream delivers them: chunks at byte offsets of the
 * attempt's combined log (each attempt's kept under its number; the task's cursor,
 * log_size/log_crc/log_complete, is its current attempt's). Appends are contiguous (a chunk must start at the committed
 * offset); a duplicate is acknowledged, a gap is answered with the committed offset so the
 * runner resends. The stored log's CRC-32 is kept as chunks arrive and checked against the
 * runner's at the final frame; on a mismatch the log is dropped and resent whole.
 */
export class LogsStore {
  constructor(private readonly c: StoreCtx) {}

  /**
   * Applies a burst of frames from one runner in one transaction; one result per frame, in
   * order. The cursors are read without row locks and written back compare-and-set: a
   * concurrent writer of the same log (a second stream of the runner, overlapping a
   * reconnect) makes the transaction run again on fresh cursors. A lock would cost a write
   * to every task row for a race that almost never happens.
   */
  async appendMany(runnerId: string, frames: LogWrite[]): Promise<LogAckResult[]> {
    if (frames.length === 0) return [];
    return this.c.db.tx(async (q) => {
      const leaseIds = [...new Set(frames.map((f) => f.leaseId))];
      const rows = await q.query<{
        id: string; attempt: number; state: string; task_id: string; log_size: number; log_crc: number; log_complete: boolean;
      }>(
        `SELECT l.id, l.attempt, l.state, t.id AS task_id, t.log_size, t.log_crc, t.log_complete
         FROM task_leases l JOIN tasks t ON t.id = l.task_id
         WHERE l.id = ANY($1::text[]) AND l.runner_id = $2 AND t.attempt = l.attempt`,
        [leaseIds, runnerId],
      );
      const leases = new Map(rows.rows.map((r) => [r.id, r]));
      const cursors = new Map<string, Cursor>();
      const chunks: { taskId: string; attempt: number; offset: number; stream: number; data: Uint8Array }[] = [];
      const out: LogAckResult[] = [];
      for (const f of frames) {
        const l = leases.get(f.leaseId);
        if (!l || l.attempt !== f.attempt) {
          out.push({ committed: 0, stop: true, complete: false });
          continue;
        }
        // The log stream can overtake the control stream: frames of a lease whose Accept is
        // not processed yet are stored like any other (under this attempt's number: the
        // earlier attempts' logs are kept apart).
        let cur = cursors.get(l.id);
        if (!cur) {
          const size = Number(l.log_size);
          cur = { taskId: l.task_id, attempt: l.attempt, size, crc: Number(l.log_crc), complete: l.log_complete, dirty: false, reset: false, was: size };
          cursors.set(l.id, cur);
        }
        if (!cur.complete && f.data.length > 0 && f.offset === cur.size) {
          chunks.push({ taskId: cur.taskId, attempt: cur.attempt, offset: f.offset, stream: f.stream, data: f.data });
          cur.size += f.data.length;
          cur.crc = crc32(f.data, cur.crc);
          cur.dirty = true;
        }
        if (f.final && !cur.complete && cur.size === f.final.totalBytes) {
          if (cur.crc === f.final.crc >>> 0) {
            cur.complete = true;
            cur.dirty = true;
          } else {
            // Corrupt somewhere: drop what is stored, the runner resends it all.
            cur.reset = true;
            cur.size = 0;
            cur.crc = 0;
            cur.dirty = true;
            for (let i = chunks.length - 1; i >= 0; i--) if (chunks[i]!.taskId === cur.taskId) chunks.splice(i, 1);
          }
        }
        out.push({ committed: cur.size, stop: false, complete: cur.complete });
      }
      // Cursors first, compare-and-set (same attempt, same size, not complete): this also
      // takes the row locks, so the chunks below are written by the cursor's only writer.
      const dirty = [...cursors.values()].filter((c) => c.dirty);
      if (dirty.length > 0) {
        const set = await q.query(
          `UPDATE tasks t SET log_size = v.size, log_crc = v.crc, log_complete = v.complete
           FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bool[], $5::int[], $6::bigint[]) AS v(id, size, crc, complete, attempt, was)
           WHERE t.id = v.id AND t.attempt = v.attempt AND t.log_size = v.was AND NOT t.log_complete`,
          [
            dirty.map((c) => c.taskId),
            dirty.map((c) => c.size),
            dirty.map((c) => c.crc),
            dirty.map((c) => c.complete),
            dirty.map((c) => c.attempt),
            dirty.map((c) => c.was),
          ],
        );
        if (set.rowCount !== dirty.length) {
          throw Object.assign(new Error('a log was written concurrently; applying the frames again'), { code: '40001' });
        }
      }
      const resets = [...cursors.values()].filter((c) => c.reset);
      if (resets.length > 0) {
        await q.query(
          'DELETE FROM task_log_chunks d USING unnest($1::text[], $2::int[]) AS v(task_id, attempt) WHERE d.task_id = v.task_id AND d.attempt = v.attempt',
          [resets.map((c) => c.taskId), resets.map((c) => c.attempt)],
        );
      }
      if (chunks.length > 0) {
        const params: unknown[] = [];
        const values = chunks.map(
          (ch) => `($${params.push(ch.taskId)}, $${params.push(ch.attempt)}, $${params.push(ch.offset)}, $${params.push(ch.stream)}, $${params.push(ch.data)})`,
        );
        await q.query(`INSERT INTO task_log_chunks (task_id, attempt, byte_offset, stream, data) VALUES ${values.join(', ')}`, params);
      }
      return out;
    });
  }
}
