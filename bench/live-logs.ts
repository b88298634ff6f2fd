/**
 * Live-log latency benchmark (README.md, "Live logs"): prints one JSON line.
 *
 * One control plane on PostgreSQL, one runner with the Docker executor and its log flush
 * interval at `--flush` ms (GANTRY_LOG_FLUSH_INTERVAL_MS, a separate setting: the latency
 * below includes it). A task prints a line every 100 ms for `--lines` lines, each carrying
 * the kernel's uptime at the moment it is printed (/proc/uptime, which the container shares
 * with the host: 10 ms resolution). 1, 100 and 1,000 followers (Server-Sent Events, or
 * WebSockets with `--ws`), spread over `--procs` processes of their own (so that the
 * clients' parsing is not counted as the server's), note the uptime when each line reaches
 * them; the latency is the difference, p50 and p99 over every line of every follower.
 *
 * Usage: node --import tsx bench/live-logs.ts [--followers 1,100,1000] [--lines 60] [--flush 50] [--procs 4] [--ws]
 *   (GANTRY_BENCH_PG_URL, GANTRY_BENCH_IMAGE)
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { startControlPlane } from '../control-plane/start.ts';
import { benchAccount, benchRunner } from './rig.ts';
import { pct, progress } from './stats.ts';

const { values: args } = parseArgs({
  options: { followers: { type: 'string', default: '1,100,1000' }, lines: { type: 'string', default: '60' }, flush: { type: 'string', default: '50' }, procs: { type: 'string', default: '4' }, ws: { type: 'boolean', default: false } },
});
const LINES = Number(args.lines);
const ADMIN = process.env.GANTRY_BENCH_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
const IMAGE = process.env.GANTRY_BENCH_IMAGE ?? 'gantry-test/busybox:latest';

const FOLLOWERS = path.join(import.meta.dirname, 'live-logs-followers.ts');

/**
 * Latencies (ms) of the lines `n` followers see, until the end: the followers run in `procs`
 * processes of their own (bench/live-logs-followers.ts), not in the control plane's.
 */
async function follow(url: string, token: string, ws: boolean, n: number, procs: number): Promise<number[]> {
  const counts = Array.from({ length: Math.min(n, procs) }, (_, i) => Math.floor(n / procs) + (i < n % procs ? 1 : 0)).filter((c) => c > 0);
  const children = counts.map((c) =>
    spawn(process.execPath, ['--import', 'tsx', FOLLOWERS, url, String(c), ws ? 'ws' : 'sse'], { env: { ...process.env, GANTRY_BENCH_TOKEN: token }, stdio: ['ignore', 'pipe', 'inherit'] }),
  );
  const lat = await Promise.all(
    children.map(
      (child) =>
        new Promise<number[]>((resolve, reject) => {
          let text = '';
          child.stdout!.on('data', (d: Buffer) => (text += d.toString()));
          child.on('error', reject);
          child.on('exit', (code) => {
            const last = text.trim().split('\n').at(-1) ?? '';
            if (code !== 0 || !last.startsWith('[')) return reject(new Error(`a follower process ended with ${code}: ${text.slice(-500)}`));
            resolve(JSON.parse(last) as number[]);
          });
        }),
    ),
  );
  return lat.flat();
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
      progress(`${n} followers of task ${id}`);
      const cpu = process.cpuUsage();
      const lat = await follow(`${api}/tasks/${id}/log`, token, args.ws, n, Number(args.procs));
      const used = process.cpuUsage(cpu);
      results.push({
        followers: n,
        lines: lat.length,
        expected: n * LINES,
        p50_ms: Math.round(pct(lat, 50)),
        p99_ms: Math.round(pct(lat, 99)),
        max_ms: Math.round(pct(lat, 100)),
        // The control plane's process (with the runner agent in it) over the whole follow.
        cp_cpu_s: Math.round((used.user + used.system) / 1e4) / 100,
      });
      progress(JSON.stringify(results.at(-1)));
    }
    await runner.stop();
  } finally {
    await cp.stop();
    await admin.query(`DROP DATABASE ${name} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
    fs.rmSync(dir, { recursive: true, force: true });
  }
  console.log(JSON.stringify({ bench: 'live-logs', transport: args.ws ? 'websocket' : 'sse', flush_ms: Number(args.flush), line_every_ms: 100, follower_procs: Number(args.procs), results }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
