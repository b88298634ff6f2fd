/**
 * Followers for bench/live-logs.ts, in a process of their own so that their parsing does
 * not run in the control plane's process. Follows one log `n` times, over Server-Sent Events
 * (node:http, parsed as EventSource does) or WebSockets, notes the kernel's uptime when each
 * `at <uptime>` line reaches a follower, prints `ready` once every follower is connected and,
 * when every follow has ended, one JSON line: the latencies (ms) of the lines printed after
 * every follower of this process was connected (the steady state, not the connection storm).
 *
 * Usage (by bench/live-logs.ts): node --import tsx bench/live-logs-followers.ts <url> <n> <sse|ws>
 *   with the token in GANTRY_BENCH_TOKEN.
 */
import fs from 'node:fs';
import http from 'node:http';
import { WebSocket } from 'ws';

const [url, count, transport] = process.argv.slice(2) as [string, string, 'sse' | 'ws'];
const token = process.env.GANTRY_BENCH_TOKEN ?? '';
const uptimeMs = () => Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000;
const out: number[] = [];

/** One follower: resolves when it is connected, and `done` when its follow has ended. */
/** When every follower of this process was connected: lines printed before are not counted. */
let since = Infinity;
function follow(): { connected: Promise<void>; done: Promise<void> } {
  const take = (text: string, now: number) => {
    for (const m of text.matchAll(/^at (\d+\.\d+)$/gm)) {
      const at = Number(m[1]) * 1000;
      if (at >= since) out.push(now - at);
    }
  };
  let connected!: () => void;
  const ready = new Promise<void>((r) => (connected = r));
  const done = new Promise<void>((resolve, reject) => {
    if (transport === 'ws') {
      const s = new WebSocket(`${url.replace('http', 'ws')}/ws`, { headers: { Authorization: `OAuth ${token}` } });
      s.on('open', () => connected());
      s.on('message', (d) => take(d.toString(), uptimeMs()));
      s.on('close', () => resolve());
      s.on('error', reject);
      return;
    }
    const req = http.get(url, { headers: { Accept: 'text/event-stream', Authorization: `OAuth ${token}` } }, (res) => {
      if (res.statusCode !== 200) return reject(new Error(`follow answered ${res.statusCode}`));
      connected();
      res.setEncoding('utf8');
      let buf = '';
      res.on('data', (chunk: string) => {
        const now = uptimeMs();
        buf += chunk;
        let end: number;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const ev = buf.slice(0, end);
          buf = buf.slice(end + 2);
          if (!/^event: log$/m.test(ev)) continue;
          const data = /^data: (.*)$/m.exec(ev)?.[1];
          if (data) take((JSON.parse(data) as { text: string }).text, now);
        }
      });
      res.on('end', () => resolve());
      res.on('error', reject);
    });
    req.on('error', reject);
  });
  return { connected: ready, done };
}

const all = Array.from({ length: Number(count) }, follow);
await Promise.all(all.map((f) => f.connected));
since = uptimeMs();
process.stdout.write('ready\n');
await Promise.all(all.map((f) => f.done));
process.stdout.write(`${JSON.stringify(out)}\n`);
