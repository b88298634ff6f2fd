import { WebSocket } from 'ws';

/** One Server-Sent Event as an EventSource would see it. */
export interface SseEvent {
  id: string | undefined;
  event: string;
  data: string;
}

/**
 * The events of a `text/event-stream` reply, parsed as EventSource does (fields by line,
 * an empty line dispatches), until the reply ends or `signal` aborts. Throws when the reply
 * is not a 200 event stream.
 */
export async function* sseEvents(url: string, headers: Record<string, string>, signal: AbortSignal): AsyncGenerator<SseEvent> {
  const res = await fetch(url, { headers: { Accept: 'text/event-stream', ...headers }, signal });
  const type = res.headers.get('content-type') ?? '';
  if (res.status !== 200 || !type.startsWith('text/event-stream')) throw new Error(`not an event stream: ${res.status} ${type} ${await res.text()}`);
  const decoder = new TextDecoder();
  let buf = '';
  let cur: { id?: string; event?: string; data: string[] } = { data: [] };
  try {
    for await (const bytes of res.body!) {
      buf += decoder.decode(bytes as Uint8Array, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        if (line === '') {
          if (cur.data.length > 0) yield { id: cur.id, event: cur.event ?? 'message', data: cur.data.join('\n') };
          cur = { data: [] };
          continue;
        }
        const colon = line.indexOf(':');
        const [field, value] = colon < 0 ? [line, ''] : [line.slice(0, colon), line.slice(colon + 1).replace(/^ /, '')];
        if (field === 'data') cur.data.push(value);
        else if (field === 'id') cur.id = value;
        else if (field === 'event') cur.event = value;
      }
    }
  } catch (err) {
    if (!signal.aborted) throw err;
  }
}

/** A WebSocket's messages and how it closed. */
export interface WsSession {
  messages: string[];
  /** Resolves with the close code and reason. */
  closed: Promise<{ code: number; reason: string }>;
  /** Resolves once `n` messages have arrived. */
  received(n: number): Promise<void>;
  close(): void;
}

/** Opens a WebSocket to `url` and records what it receives. */
export function openWs(url: string, headers: Record<string, string> = {}): Promise<WsSession> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    const messages: string[] = [];
    const waiters: { n: number; resolve: () => void }[] = [];
    const closed = new Promise<{ code: number; reason: string }>((res) => ws.on('close', (code, reason) => res({ code, reason: reason.toString() })));
    ws.on('message', (data) => {
      messages.push(data.toString());
      for (const w of [...waiters]) if (messages.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => reject(Object.assign(new Error(`refused: ${res.statusCode} ${body}`), { status: res.statusCode, body })));
    });
    ws.once('error', reject);
    ws.once('open', () =>
      resolve({
        messages,
        closed,
        received: (n) => (messages.length >= n ? Promise.resolve() : new Promise<void>((r) => waiters.push({ n, resolve: r }))),
        close: () => ws.close(),
      }),
    );
  });
}
