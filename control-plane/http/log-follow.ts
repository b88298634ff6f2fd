import { Readable } from 'node:stream';
import type { ParameterizedContext } from 'koa';
import { badRequest } from '../errors.ts';
import { encodedOnce, type DataEvent, type FollowEvent, type LogFeed } from '../live/log-feed.ts';
import type { ApiState } from './state.ts';
import { flag } from './validate.ts';
import { STREAM_PAGE, STREAM_PAGE_CSP } from './stream-page.ts';

/** The largest byte offset a client may name (PostgreSQL's bigint is larger; JavaScript's safe integers are not). */
const MAX_OFFSET = Number.MAX_SAFE_INTEGER;

/** How a log request wants its log: whole now, followed as plain text, or as Server-Sent Events. */
export type LogMode = 'whole' | 'follow' | 'events';

export function logMode(ctx: ParameterizedContext<ApiState>): LogMode {
  if (/\btext\/event-stream\b/i.test(ctx.get('Accept'))) return 'events';
  return flag(ctx.state.query!, 'follow') ? 'follow' : 'whole';
}

/**
 * Where a follower starts: `Last-Event-ID` (an EventSource reconnecting) before `?offset=`, else 0.
 * A bad value is a 400 naming it.
 */
export function startOffset(lastEventId: string | undefined, offset: unknown): number {
  if (lastEventId !== undefined && lastEventId !== '') {
    if (!/^[0-9]{1,16}$/.test(lastEventId) || Number(lastEventId) > MAX_OFFSET) {
      throw badRequest(`Last-Event-ID must be a byte offset of the log (a whole number from 0 to ${MAX_OFFSET})`);
    }
    return Number(lastEventId);
  }
  return typeof offset === 'number' ? offset : 0;
}

/** The task's status as a follower is told it at the start. */
export interface FollowStart {
  taskId: string;
  execution: number | null;
  /** `current`: the task's log, which moves on to a new attempt when one replaces it. */
  attempt: number | 'current';
  status: string;
}

/**
 * A follow's events, cut where a UTF-8 character is whole (a text frame or event carries
 * text: the bytes of a character split between two chunks wait for the rest), and only of
 * one stream when `stream` is given (offsets stay those of the combined log).
 */
export async function* textEvents(events: AsyncIterable<FollowEvent>, stream?: 'stdout' | 'stderr'): AsyncGenerator<FollowEvent> {
  let held: { offset: number; stream: 'stdout' | 'stderr' | 'note'; data: Buffer } | undefined;
  for await (const e of events) {
    if (e.kind !== 'data') {
      if (held) yield { kind: 'data', ...held };
      held = undefined;
      yield e;
      continue;
    }
    if (stream && e.stream !== stream) continue;
    let data = e.data;
    let offset = e.offset;
    const merged = held !== undefined && held.offset + held.data.length === e.offset && held.stream === e.stream;
    if (merged) {
      data = Buffer.concat([held!.data, data]);
      offset = held!.offset;
    } else if (held) {
      yield { kind: 'data', ...held };
    }
    held = undefined;
    const whole = wholeUtf8(data);
    if (whole < data.length) held = { offset: offset + whole, stream: e.stream, data: Buffer.from(data.subarray(whole)) };
    // A piece passed on whole stays the tail's shared event (its encodings are shared too).
    if (whole === data.length && !merged) yield e;
    else if (whole > 0) yield { kind: 'data', offset, stream: e.stream, data: data.subarray(0, whole) };
  }
}

/** Bytes of `b` up to the start of a UTF-8 sequence its end cuts short (all of it when none is). */
export function wholeUtf8(b: Buffer): number {
  for (let back = 1; back <= Math.min(3, b.length); back++) {
    const c = b[b.length - back]!;
    if ((c & 0xc0) === 0x80) continue; // a continuation byte: look further back
    const need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
    return need > back ? b.length - back : b.length;
  }
  return b.length;
}

/**
 * Answers a follow: plain text as it is stored, ending when the log does (or at the follow's
 * time limit, the client then resumes with `?offset=`), or Server-Sent Events (`log` events
 * whose id is the offset after them, `behind`, and a last `end` saying the outcome).
 */
export function answerFollow(
  ctx: ParameterizedContext<ApiState>,
  feed: LogFeed,
  start: FollowStart,
  from: number,
  mode: 'follow' | 'events',
  stream?: 'stdout' | 'stderr',
): void {
  const aborted = new AbortController();
  ctx.req.once('close', () => aborted.abort());
  const events = feed.follow(start.taskId, start.attempt, from, aborted.signal);
  ctx.status = 200;
  ctx.set('Cache-Control', 'no-store');
  ctx.set('X-Accel-Buffering', 'no'); // nginx: pass each write on
  if (mode === 'follow') {
    ctx.type = 'text/plain; charset=utf-8';
    ctx.set('X-Log-Offset', String(from));
    ctx.body = Readable.from(plain(events, stream), { objectMode: false });
  } else {
    ctx.type = 'text/event-stream; charset=utf-8';
    ctx.body = Readable.from(sse(textEvents(events, stream), start, from), { objectMode: false });
  }
  ctx.req.socket.setNoDelay(true);
}

async function* plain(events: AsyncIterable<FollowEvent>, stream?: string): AsyncGenerator<Buffer> {
  for await (const e of events) if (e.kind === 'data' && (!stream || e.stream === stream)) yield e.data;
}

const event = (name: string, data: unknown, id?: number) => Buffer.from(`${id === undefined ? '' : `id: ${id}\n`}event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
const logEvent = (e: DataEvent) => event('log', { offset: e.offset, stream: e.stream, text: e.data.toString('utf8') }, e.offset + e.data.length);

async function* sse(events: AsyncIterable<FollowEvent>, start: FollowStart, from: number): AsyncGenerator<Buffer> {
  // retry: how soon an EventSource reconnects (with Last-Event-ID) after a cut connection.
  yield Buffer.from(`retry: 1000\n\n`);
  yield event('start', { task_id: start.taskId, execution: start.execution, status: start.status, offset: from });
  for await (const e of events) {
    if (e.kind === 'data') yield encodedOnce(e, 'sse', logEvent);
    else if (e.kind === 'behind') yield event('behind', { offset: e.offset, size: e.size });
    // A new attempt's log starts at byte 0: the id says so, for a reconnect.
    else if (e.kind === 'attempt') yield event('execution', { attempt: e.attempt }, 0);
    else yield event('end', { status: e.status, size: e.size, log_complete: e.logComplete }, e.size);
  }
}

/** Answers a stream page (http/stream-page.ts), with its strict Content-Security-Policy. */
export function answerStreamPage(ctx: ParameterizedContext<ApiState>): void {
  ctx.set('Content-Security-Policy', STREAM_PAGE_CSP);
  ctx.set('Referrer-Policy', 'no-referrer');
  ctx.set('X-Content-Type-Options', 'nosniff');
  ctx.set('Cache-Control', 'no-store');
  ctx.type = 'text/html; charset=utf-8';
  ctx.body = STREAM_PAGE;
}
