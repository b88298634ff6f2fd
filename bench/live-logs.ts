/**
 * Live-log latency benchmark (README.md, "Live logs"): prints one JSON line.
 *
 * One control plane on PostgreSQL, one runner with the Docker executor and its log flush
 * interval at `--flush` ms (GANTRY_LOG_FLUSH_INTERVAL_MS, a separate setting: the latency
 * below includes it). A task prints a line every 100 ms for `--lines` lines, each carrying
 * the kernel's uptime at the moment it is printed (/proc/uptime, which the container shares
 * with the host: 10 ms resolution). 1, 100 and 1,000 followers (Server-Sent Events, or
 * WebSockets with `--ws`) in this process note the uptime when each line reaches them;
 * the latency is the difference, p50 and p99 over every line of every follower.
 *
 * Usage: node --import tsx bench/live-logs.ts [--followers 1,100,1000] [--lines 60] [--flush 50] [--ws]
 *   (GANTRY_BENCH_PG_URL, GANTRY_BENCH_IMAGE)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { WebSocket } from 'ws';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { startControlPlane } from '../control-plane/start.ts';
import { sseEvents } from '../test/helpers/live-logs.ts';
import { benchAccount, benchRunner } from './rig.ts';

const { values: args } = parseArgs({
  options: { followers: { type: 'string', default: '1,100,1000' }, lines: { type: 'string', default: '60' }, flush: { type: 'string', default: '50' }, ws: { type: 'boolean', default: false } },
});
const LINES = Number(args.lines);
const ADMIN = process.env.GANTRY_BENCH_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
const IMAGE = process.env.GANTRY_BENCH_IMAGE ?? 'gantry-test/busybox:latest';
const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const uptimeMs = () => Number(fs.readFileSync('/proc/uptime', 'utf8').split(' ')[0]) * 1000;

/** Latencies (ms) of the lines one follower sees, until the end. */
async function follow(url: string, token: string, ws: boolean, out: number[]): Promise<void> {
  // Lines printed before this follower was connected are read from the store: not live, not counted.
  let since = Infinity;
  const take = (text: string) => {
    const now = uptimeMs();
    for (const m of text.matchAll(/^at (\d+\.\d+)$/gm)) {
      const at = Number(m[1]) * 1000;
      if (at >= since) out.push(now - at);
    }
  };
  if (ws) {
    await new Promise<void>((resolve, reject) => {
      const s = new WebSocket(`${url.replace('http', 'ws')}/ws`, { headers: { Authorization: `OAuth ${token}` } });
      s.on('open', () => (since = uptimeMs()));
      s.on('message', (d) => take(d.toString()));
      s.on('close', () => resolve());
      s.on('error', reject);
    });
    return;
  }
  since = uptimeMs();
  for await (const e of sseEvents(url, { Authorization: `OAuth ${token}` }, new AbortController().signal)) {
    if (e.event === 'log') take((JSON.parse(e.data) as { text: string }).text);
  }
}

async function main() {
  const name = `gantry_livelogs_${process.pid}`;
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(ADMIN);
  u.pathname = `/${name}`;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-livelogs-'));
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const cp = await startControlPlane(
    loadConfig({ DATABASE_URL: u.toString(), GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', GANTRY_DATA_DIR: dir, GANTRY_LOG_FLUSH_INTERVAL_MS: args.flush, LOG_LEVEL: 'warn' }),
    log,
  );
  const store = cp.store;
  const results: Record<string, unknown>[] = [];
  try {
    const { project, token, cluster, clusterToken } = await benchAccount(store, 128);
    const runner = await benchRunner(cp.grpcPort, { id: cluster.id, token: clusterToken }, dir, log, { GANTRY_RUNNER_SLOTS: '1', GANTRY_RUNNER_LABELS: 'gantry.bench=live-logs' });
    const api = `${cp.url}/2/projects/${project.id}`;
    const headers = { Authorization: `OAuth ${token}` };
    const form = new FormData();
    const command = `i=0; while [ $i -lt ${LINES} ]; do read up idle < /proc/uptime; echo "at $up"; i=$((i+1)); sleep 0.1; done`;
    form.append('data', JSON.stringify({ name: 'ticker', image: IMAGE, command }));
    if ((await fetch(`${api}/codes`, { method: 'POST', headers, body: form })).status !== 200) throw new Error('upload failed');
    for (const n of args.followers.split(',').map(Number)) {
      const res = await fetch(`${api}/tasks`, { method: 'POST', headers: { ...headers, 'Content-Type': 'application/json' }, body: JSON.stringify({ tasks: [{ code_name: 'ticker' }] }) });
      const id = ((await res.json()) as { tasks: { id: string }[] }).tasks[0]!.id;
      const lat: number[] = [];
      progress(`${n} followers of task ${id}`);
      await Promise.all(Array.from({ length: n }, () => follow(`${api}/tasks/${id}/log`, token, args.ws, lat)));
      results.push({ followers: n, lines: lat.length, expected: n * LINES, p50_ms: Math.round(pct(lat, 50)), p99_ms: Math.round(pct(lat, 99)), max_ms: Math.round(pct(lat, 100)) });
      progress(JSON.stringify(results.at(-1)));
    }
    await runner.stop();
  } finally {
    await cp.stop();
    await admin.query(`DROP DATABASE ${name} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({ bench: 'live-logs', transport: args.ws ? 'websocket' : 'sse', flush_ms: Number(args.flush), line_every_ms: 100, results }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
