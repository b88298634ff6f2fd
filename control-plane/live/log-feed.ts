import type { Logger } from '../../lib/logger.ts';
import type { LiveLogSettings } from '../config.ts';
import type { Db } from '../store/db.ts';
import { chunksFrom, followState, type FollowState, type LogChunk } from '../store/executions.ts';
import { FINAL_STATUSES } from '../store/tasks.ts';

/** The channel store/migrations/019_log_notify.sql announces tasks on (payload: the task id). */
export const LOG_CHANNEL = 'gantry_log';

/** Chunks read per query: a tail catching up, or a follower reading the store. */
const PAGE = 64;
const FINAL = new Set<string>(FINAL_STATUSES);

/** A run of one stream's bytes at a byte offset of the attempt's combined log. */
export interface LogPiece {
  offset: number;
  stream: 'stdout' | 'stderr' | 'note';
  data: Buffer;
}

/** How a followed log ended. */
export interface LogEnd {
  /** The task's final status, or the followed execution's outcome (runner_lost, ...), or `deleted`. */
  status: string;
  /** The log's size: every byte of it was delivered. */
  size: number;
  /** The runner's final frame matched (false: the task ended and its log stayed quiet for the grace). */
  logComplete: boolean;
}

/** A piece as a follower reads it. The tail's own are shared by all its followers (see `encodedOnce`). */
export type DataEvent = { kind: 'data' } & LogPiece;

/** What a follower reads, in order: its log's pieces, a note that it fell behind, the end. */
export type FollowEvent =
  | DataEvent
  | { kind: 'behind'; offset: number; size: number }
  /** A follow of the task's current attempt moved on to a new one, read from its byte 0. */
  | { kind: 'attempt'; attempt: number }
  | ({ kind: 'end' } & LogEnd);

const STREAMS = ['note', 'stdout', 'stderr'] as const;
const pieceOf = (c: LogChunk): DataEvent => ({ kind: 'data', offset: c.offset, stream: STREAMS[c.stream] ?? 'note', data: Buffer.from(c.data.buffer, c.data.byteOffset, c.data.byteLength) });

/** `p` from byte `from` on (p holds it): `p` itself when it starts there. */
const cut = (p: DataEvent, from: number): DataEvent => (from <= p.offset ? p : { ...p, offset: from, data: p.data.subarray(from - p.offset) });

const encodings = new WeakMap<DataEvent, Map<string, Buffer>>();

/**
 * `e` encoded by `encode` as format `format`, once for every follower holding the same
 * event: a tail's pieces reach all its followers as one object, so a line shown to a
 * thousand followers is turned into an SSE event or a WebSocket message once, not a
 * thousand times.
 */
export function encodedOnce(e: DataEvent, format: string, encode: (e: DataEvent) => Buffer): Buffer {
  let m = encodings.get(e);
  if (!m) encodings.set(e, (m = new Map()));
  let b = m.get(format);
  if (!b) m.set(format, (b = encode(e)));
  return b;
}

/**
 * One followed attempt's log, shared by every follower of it on this replica: read once per
 * wake from the store, its recent output kept in a bounded window (`bufferBytes`).
 */
class Tail {
  readonly pieces: DataEvent[] = [];
  /** Offset of the window's first byte, and of the byte after its last. */
  start = 0;
  end = 0;
  bytes = 0;
  ended: LogEnd | undefined;
  refs = 0;
  private reading: Promise<void> | undefined;
  private again = false;
  private waiters = new Set<() => void>();
  /** When the task was first seen final with its log not whole, and the log's size then. */
  private quiet: { since: number; size: number } | undefined;
  private graceTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly taskId: string,
    readonly attempt: number,
    private readonly feed: LogFeed,
  ) {}

  /** Reads what is new; concurrent wakes fold into one more read after the current one. */
  refresh(): Promise<void> {
    if (this.reading) {
      this.again = true;
      return this.reading;
    }
    this.reading = (async () => {
      do {
        this.again = false;
        try {
          await this.read();
        } catch (err) {
          this.feed.log.warn({ taskId: this.taskId, attempt: this.attempt, err: (err as Error).message }, 'reading a followed log failed; trying again at the next wake');
        }
      } while (this.again && !this.ended);
      this.reading = undefined;
      for (const w of this.waiters) w();
      this.waiters.clear();
    })();
    return this.reading;
  }

  private async read(): Promise<void> {
    if (this.ended) return;
    const { db } = this.feed;
    // The state first: chunks read after it include every byte written before it was final.
    const state = await followState(db, this.taskId, this.attempt);
    for (;;) {
      const rows = await chunksFrom(db, this.taskId, this.attempt, this.end, PAGE);
      for (const r of rows) this.push(cut(pieceOf(r), this.end));
      if (rows.length < PAGE) break;
    }
    const end = this.endOf(state, Date.now());
    if (end) {
      this.ended = end;
      clearTimeout(this.graceTimer);
    }
  }

  /** Whether the followed log is over: its attempt is over and its last bytes are read. */
  private endOf(s: FollowState | undefined, now: number): LogEnd | undefined {
    if (!s) return { status: 'deleted', size: this.end, logComplete: false };
    // A later attempt runs: this one's log can no longer grow (store/logs.ts appends only to
    // the current attempt).
    if (s.currentAttempt !== this.attempt) return { status: s.outcome ?? 'ended', size: this.end, logComplete: false };
    if (!FINAL.has(s.status)) return undefined;
    if (s.logComplete) return { status: s.status, size: this.end, logComplete: true };
    // The result can be recorded before the log's last frames: wait for them, a while.
    if (!this.quiet || this.quiet.size !== this.end) this.quiet = { since: now, size: this.end };
    const grace = this.feed.settings.graceMs;
    if (now - this.quiet.since >= grace) return { status: s.status, size: this.end, logComplete: false };
    clearTimeout(this.graceTimer);
    this.graceTimer = setTimeout(() => void this.refresh(), grace - (now - this.quiet.since) + 5);
    this.graceTimer.unref();
    return undefined;
  }

  private push(p: DataEvent): void {
    if (p.data.length === 0) return;
    this.pieces.push(p);
    this.end = p.offset + p.data.length;
    this.bytes += p.data.length;
    if (this.pieces.length === 1) this.start = p.offset;
    while (this.bytes > this.feed.settings.bufferBytes && this.pieces.length > 1) {
      const first = this.pieces.shift()!;
      this.bytes -= first.data.length;
      this.start = this.pieces[0]!.offset;
    }
  }

  /** Pieces of the window from `from` on (from within the window). */
  from(from: number): DataEvent[] {
    const out: DataEvent[] = [];
    for (const p of this.pieces) if (p.offset + p.data.length > from) out.push(cut(p, from));
    return out;
  }

  /** Resolves at the end of the next read (or when `signal` aborts). */
  next(signal: AbortSignal): Promise<void> {
    return new Promise((resolve) => {
      const done = () => {
        signal.removeEventListener('abort', done);
        this.waiters.delete(done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  close(): void {
    clearTimeout(this.graceTimer);
    for (const w of this.waiters) w();
  }
}

/**
 * Live logs on this replica (docs/architecture.md, "Live logs"). The store stays the record:
 * a notification only says "task X's log grew or the task ended" (a trigger on tasks,
 * delivered at commit on every replica through LISTEN, on PostgreSQL and PGlite alike), and
 * the task's tails read the new chunks once for all their followers. A follower is an async
 * iterator: it takes its next piece only when its connection has taken the last, so a slow
 * one holds nothing up. One that falls out of the tail's window is told so and reads the
 * store itself until it is back in it. A slow poll reads every tail again, for a
 * notification lost with the listening connection.
 */
export class LogFeed {
  private readonly tails = new Map<string, Map<number, Tail>>();
  private stopListening: (() => Promise<void>) | undefined;
  private poll: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    readonly db: Db,
    readonly settings: Readonly<LiveLogSettings>,
    readonly log: Logger,
  ) {}

  async start(): Promise<void> {
    this.stopListening = await this.db.listen(LOG_CHANNEL, (taskId) => this.wake(taskId), () => this.wakeAll());
    this.poll = setInterval(() => this.wakeAll(), this.settings.pollMs);
    this.poll.unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.poll);
    for (const byAttempt of this.tails.values()) for (const tail of byAttempt.values()) tail.close();
    this.tails.clear();
    await this.stopListening?.();
  }

  /** How many logs and followers are followed here now (metrics, tests). */
  counts(): { logs: number; followers: number } {
    let logs = 0;
    let followers = 0;
    for (const m of this.tails.values()) for (const t of m.values()) {
      logs++;
      followers += t.refs;
    }
    return { logs, followers };
  }

  private wake(taskId: string): void {
    for (const tail of this.tails.get(taskId)?.values() ?? []) void tail.refresh();
  }

  private wakeAll(): void {
    for (const id of this.tails.keys()) this.wake(id);
  }

  /**
   * Follows attempt `attempt` of the task from byte `from` (`current`: the task's current
   * attempt, and the next one from its byte 0 when a new attempt replaces it): its pieces as
   * they are stored, then its end. Stops early when `signal` aborts or `maxMs` passes
   * (without an end event: the client resumes from the offset it reached).
   */
  async *follow(taskId: string, attempt: number | 'current', from: number, signal: AbortSignal): AsyncGenerator<FollowEvent> {
    if (this.stopped) return;
    const stop = AbortSignal.any([signal, AbortSignal.timeout(this.settings.maxMs)]);
    let which = attempt === 'current' ? ((await followState(this.db, taskId, 0))?.currentAttempt ?? 0) : attempt;
    let pos = from;
    for (;;) {
      const end = yield* this.followOne(taskId, which, pos, stop);
      if (!end) return;
      const now = attempt === 'current' && end.status !== 'deleted' ? await followState(this.db, taskId, which) : undefined;
      if (!now || now.currentAttempt === which) {
        yield { kind: 'end', ...end };
        return;
      }
      which = now.currentAttempt;
      pos = 0;
      yield { kind: 'attempt', attempt: which };
    }
  }

  /** One attempt's log from `from`; its end, or undefined when stopped first. */
  private async *followOne(taskId: string, attempt: number, from: number, stop: AbortSignal): AsyncGenerator<FollowEvent, LogEnd | undefined> {
    const tail = this.acquire(taskId, attempt);
    try {
      await tail.refresh();
      let pos = from;
      let inWindow = pos >= tail.start;
      while (!stop.aborted && !this.stopped) {
        if (pos < tail.end && pos < tail.start) {
          // Behind the window: from the store, a page at a time.
          if (inWindow) {
            inWindow = false;
            yield { kind: 'behind', offset: pos, size: tail.end };
          }
          const rows = await chunksFrom(this.db, taskId, attempt, pos, PAGE);
          if (rows.length === 0) break;
          for (const r of rows) {
            const p = cut(pieceOf(r), pos);
            if (p.data.length === 0) continue;
            pos = p.offset + p.data.length;
            yield p;
            if (stop.aborted) return undefined;
          }
          continue;
        }
        if (pos < tail.end) {
          inWindow = true;
          for (const p of tail.from(pos)) {
            if (p.offset !== pos) break; // the window moved past us while we were writing
            pos = p.offset + p.data.length;
            yield p;
            if (stop.aborted) return undefined;
          }
          continue;
        }
        if (tail.ended) return tail.ended;
        await tail.next(stop);
      }
      return undefined;
    } finally {
      this.release(tail);
    }
  }

  private acquire(taskId: string, attempt: number): Tail {
    let byAttempt = this.tails.get(taskId);
    if (!byAttempt) this.tails.set(taskId, (byAttempt = new Map()));
    let tail = byAttempt.get(attempt);
    if (!tail) byAttempt.set(attempt, (tail = new Tail(taskId, attempt, this)));
    tail.refs++;
    return tail;
  }

  private release(tail: Tail): void {
    if (--tail.refs > 0) return;
    const byAttempt = this.tails.get(tail.taskId);
    if (byAttempt?.get(tail.attempt) !== tail) return;
    tail.close();
    byAttempt.delete(tail.attempt);
    if (byAttempt.size === 0) this.tails.delete(tail.taskId);
  }
}
