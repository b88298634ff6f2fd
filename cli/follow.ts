/**
 * Follows a task's live log over Server-Sent Events (`GET .../tasks/{id}/log` with
 * `Accept: text/event-stream`, README.md "Live logs"): `start`, `log` (its id the byte offset
 * after it), `behind`, `execution` (a new attempt's log, from byte 0) and a last `end` with
 * the final status. A reply that closes without `end` (the server's follow limit, a replica
 * going away) is resumed with `Last-Event-ID`, so nothing is lost or repeated.
 */
import type { ApiClient } from './api.ts';
import { ApiError, CliUsageError, UnreachableError } from './errors.ts';

/** What a follow does with what it reads. */
export interface FollowHandlers {
  /** Log text, in order. */
  text(stream: string, text: string): void;
  /** The task's status as the follow saw it change (start, first output, end). */
  status?(status: string): void;
  /** Something worth a line on stderr (a new attempt, a reconnect). */
  note?(line: string): void;
}

/** The `end` event: the task's final status and its log's size. */
export interface FollowEnd {
  status: string;
  size: number;
  logComplete: boolean;
}

/** Reconnects after a cut reply without an answer at all, before giving up. */
const MAX_FAILED_CONNECTS = 5;

/** Follows task `taskId`'s log until its `end` event (reconnecting where a reply was cut) and resolves with it. */
export async function followTaskLog(api: ApiClient, taskId: string, h: FollowHandlers, signal?: AbortSignal): Promise<FollowEnd> {
  let offset = 0;
  let status = '';
  let failures = 0;
  const setStatus = (s: string) => {
    if (s && s !== status) {
      status = s;
      h.status?.(s);
    }
  };
  for (;;) {
    let ended: FollowEnd | undefined;
    let seen = false;
    try {
      const res = await api.stream(api.project(`/tasks/${encodeURIComponent(taskId)}/log`), {
        headers: { Accept: 'text/event-stream', 'Last-Event-ID': String(offset) },
        signal,
      });
      for await (const ev of events(res)) {
        seen = true;
        const data = ev.data ? JSON.parse(ev.data) : {};
        if (ev.id !== undefined && /^\d+$/.test(ev.id)) offset = Number(ev.id);
        if (ev.event === 'start') setStatus(String(data.status));
        else if (ev.event === 'log') {
          if (status === 'queued') setStatus('running');
          h.text(String(data.stream), String(data.text));
        } else if (ev.event === 'execution') h.note?.(`(the task's log moved on to attempt ${data.attempt})`);
        else if (ev.event === 'end') {
          ended = { status: String(data.status), size: Number(data.size), logComplete: Boolean(data.log_complete) };
          setStatus(ended.status);
          break;
        }
      }
    } catch (err) {
      // A refusal is final; a connection that broke (or never answered) is tried again.
      if (signal?.aborted || err instanceof ApiError || err instanceof CliUsageError || err instanceof SyntaxError) throw err;
      if (++failures >= MAX_FAILED_CONNECTS) throw err;
      h.note?.(`(the log's connection broke: ${(err as Error).message}; reconnecting)`);
      await new Promise((r) => setTimeout(r, 250 * 2 ** failures));
      continue;
    }
    if (ended) return ended;
    // A reply that ended without a single event (a proxy cutting it, say) counts as a failed
    // connection, so a server that keeps doing so is given up on instead of asked in a loop.
    if (!seen) {
      if (++failures >= MAX_FAILED_CONNECTS) throw new UnreachableError(`the live log of task ${taskId} keeps closing without an event`, { hint: 'read it whole: gantry log TASK_ID' });
      await new Promise((r) => setTimeout(r, 250 * 2 ** failures));
    } else {
      failures = 0;
    }
  }
}

interface SseEvent {
  event: string;
  data: string;
  id: string | undefined;
}

/** The events of a text/event-stream reply, as the SSE specification splits them. */
async function* events(res: Response): AsyncGenerator<SseEvent> {
  const decoder = new TextDecoder();
  let buf = '';
  let ev: { event?: string; data: string[]; id?: string } = { data: [] };
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line === '') {
        if (ev.data.length > 0 || ev.event) yield { event: ev.event ?? 'message', data: ev.data.join('\n'), id: ev.id };
        ev = { data: [] };
        continue;
      }
      const c = line.indexOf(':');
      if (c === 0) continue; // a comment
      const field = c < 0 ? line : line.slice(0, c);
      const value = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
      if (field === 'data') ev.data.push(value);
      else if (field === 'event') ev.event = value;
      else if (field === 'id') ev.id = value;
    }
  }
}
