// A real HTTP receiver of outcome webhooks on loopback: it records every request whole and
// answers as the test tells it (a status, or never), and tests wait on what it received.
import { EventEmitter } from 'node:events';
import http, { type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Test } from 'tap';

export interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/** How the receiver answers one request: a status (and headers), or `hang` (never answers). */
export type Answer = { status: number; headers?: Record<string, string>; body?: string } | { hang: true };

export interface Receiver {
  url: string;
  port: number;
  received: Received[];
  /** Requests being answered (or hung) now. */
  open(): number;
  /** The most requests it held open at once. */
  peakOpen(): number;
  answer(fn: (r: Received, nth: number) => Answer): void;
  /** Resolves with the received requests once `pred` holds of them (checked at every request). */
  waitFor(what: string, pred: (all: Received[]) => boolean, timeoutMs?: number): Promise<Received[]>;
  close(): Promise<void>;
}

export async function startReceiver(t: Test, o: { host?: string; port?: number } = {}): Promise<Receiver> {
  const received: Received[] = [];
  const events = new EventEmitter();
  let answerFn: (r: Received, nth: number) => Answer = () => ({ status: 200 });
  let open = 0;
  let peak = 0;
  const hung = new Set<http.ServerResponse>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const r: Received = { path: req.url ?? '', headers: req.headers, body: Buffer.concat(chunks).toString(), at: Date.now() };
      received.push(r);
      open++;
      peak = Math.max(peak, open);
      res.on('close', () => {
        open--;
        hung.delete(res);
      });
      const a = answerFn(r, received.length);
      events.emit('request');
      if ('hang' in a) {
        hung.add(res);
        return;
      }
      res.writeHead(a.status, { 'content-type': 'text/plain', ...a.headers });
      res.end(a.body ?? 'ok');
    });
  });
  await new Promise<void>((resolve) => server.listen(o.port ?? 0, o.host ?? '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const res of hung) res.destroy();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.teardown(close);
  return {
    url: `http://${o.host ?? '127.0.0.1'}:${port}`,
    port,
    received,
    open: () => open,
    peakOpen: () => peak,
    answer: (fn) => {
      answerFn = fn;
    },
    waitFor: (what, pred, timeoutMs = 30000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (!pred(received)) return;
          clearTimeout(timer);
          events.off('request', check);
          resolve(received);
        };
        const timer = setTimeout(() => {
          events.off('request', check);
          reject(new Error(`the receiver never saw ${what} (it got ${received.length} request(s): ${received.map((r) => r.path).join(', ')})`));
        }, timeoutMs);
        events.on('request', check);
        check();
      }),
    close,
  };
}
