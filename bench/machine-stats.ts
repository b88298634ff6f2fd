/**
 * Fleet stats benchmark (README.md, "Fleet stats"): prints one JSON line.
 *
 * 1. Recording: `--runners` simulated runners beat every 5 s of virtual time for `--hours`
 *    hours, each beat with a real sample of this host's machine stats (values varied per
 *    runner and beat) through the control plane's own StatsRecorder (one sample per runner
 *    per 10 s window, a flush per window) and its stats-rollup leader job (every virtual
 *    minute). Measured: the control plane's CPU (this process) and its PostgreSQL backends'
 *    CPU (from /proc), and the rows and bytes (tables with their indexes) each level holds,
 *    turned into a runner's cost per day at the default interval.
 * 2. Reading: 30 days of 1-minute data for `--read-runners` runners (written directly),
 *    then workers.get_stats through the REST API: all runners by the hour read from the
 *    minutes (no hourly roll-up yet: the API refuses it, the store's read is timed), one
 *    runner by 10 minutes, all runners over the last
 *    day by the minute, one runner's cores split by the hour, and all
 *    runners by the hour once the hours are rolled up (what a running installation reads: its
 *    leader rolls hours up as they pass). Three calls each; median and max.
 *
 * Usage: npm run bench:stats [-- --runners 200 --hours 1 --read-runners 100]   (GANTRY_BENCH_PG_URL)
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { ManualClock } from '../lib/clock.ts';
import { newId } from '../lib/ids.ts';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { startControlPlane } from '../control-plane/start.ts';
import { openStore } from '../control-plane/store/index.ts';
import { StatsRecorder } from '../control-plane/series/recorder.ts';
import { rollupJob } from '../control-plane/series/rollup.ts';
import { flatten } from '../control-plane/series/machine-stats.ts';
import { StatsSampler } from '../runner/stats.ts';
import type { MachineStats } from '../proto/gen/gantry/runner/v1/runner.ts';

const { values: args } = parseArgs({
  options: { runners: { type: 'string', default: '200' }, hours: { type: 'string', default: '1' }, 'read-runners': { type: 'string', default: '100' } },
});
const RUNNERS = Number(args.runners);
const HOURS = Number(args.hours);
const READ_RUNNERS = Number(args['read-runners']);
const ADMIN = process.env.GANTRY_BENCH_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const DAY_S = 86_400;
const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
const TICK_HZ = 100; // USER_HZ on Linux

/** CPU seconds of these processes so far (utime + stime from /proc). */
function cpuOf(pids: number[]): number {
  let ticks = 0;
  for (const pid of pids) {
    try {
      const f = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
      ticks += Number(f[11]) + Number(f[12]);
    } catch {
      /* gone */
    }
  }
  return ticks / TICK_HZ;
}

async function freshDb(admin: pg.Client, name: string): Promise<string> {
  await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(ADMIN);
  u.pathname = `/${name}`;
  return u.toString();
}

/** A real sample of this host, once. */
async function hostSample(): Promise<MachineStats> {
  const s = new StatsSampler(process.cwd());
  s.start(60_000);
  for (;;) {
    const x = s.current(0, 0, 4);
    if (x) {
      s.stop();
      return x;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function recording(admin: pg.Client) {
  const name = `gantry_bench_stats_${process.pid}`;
  const url = await freshDb(admin, name);
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const t0 = Date.UTC(2026, 11, 1);
  const clock = new ManualClock(t0);
  const store = await openStore(loadConfig({ DATABASE_URL: url }), log, clock, newId);
  try {
    const { cluster } = await store.clusters.create('bench');
    const base = await hostSample();
    const recorder = new StatsRecorder({ series: store.series, clock, intervalS: 10, log });
    const job = rollupJob({ store, clock, statsIntervalS: 10, log });
    const fence = { term: 1, holder: 'bench' };
    const signal = new AbortController().signal;
    const ids = Array.from({ length: RUNNERS }, (_, i) => `bench-runner-${i}`);
    const counters = ids.map(() => ({ rx: 0, tx: 0, rd: 0, wr: 0 }));
    const vary = (i: number): MachineStats => {
      const c = counters[i]!;
      c.rx += 1e5 * Math.random();
      c.tx += 1e5 * Math.random();
      c.rd += 1e5 * Math.random();
      c.wr += 1e5 * Math.random();
      return {
        ...base,
        cpuPercent: 100 * Math.random(),
        cpuPerCore: base.cpuPerCore.map(() => 100 * Math.random()),
        memUsedMb: Math.round(base.memUsedMb * (0.5 + Math.random())),
        disks: base.disks.map((d) => ({ ...d, readBytes: Math.round(c.rd), writeBytes: Math.round(c.wr) })),
        interfaces: base.interfaces.map((n) => ({ ...n, rxBytes: Math.round(c.rx), txBytes: Math.round(c.tx) })),
        busySlots: Math.floor(5 * Math.random()),
        totalSlots: 4,
      };
    };
    // Backends of this store's pool: warm the pool, then find them.
    await Promise.all(Array.from({ length: 10 }, () => store.db.query('SELECT pg_sleep(0.05)')));
    const pids = (await admin.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE datname = $1', [name])).rows.map((r) => r.pid);
    const beats = (HOURS * 3600) / 5;
    const cpu0 = process.cpuUsage();
    const pg0 = cpuOf(pids);
    const wall0 = performance.now();
    for (let b = 0; b < beats; b++) {
      clock.advance(5000);
      for (let i = 0; i < RUNNERS; i++) recorder.observe(ids[i]!, cluster.id, vary(i));
      if (b % 2 === 1) await recorder.flush();
      if (b % 12 === 11) await job.tick(fence, signal);
      if (b % 720 === 719) progress(`recorded ${(b + 1) / 720} h of ${RUNNERS} runners`);
    }
    clock.advance(3_600_000);
    await job.tick(fence, signal);
    const cpu = process.cpuUsage(cpu0);
    const cpuS = (cpu.user + cpu.system) / 1e6;
    const pgS = cpuOf(pids) - pg0;
    const wallS = (performance.now() - wall0) / 1000;
    const flat = flatten(vary(0), undefined, 0).flat;
    const tables: Record<string, { rows: number; bytes: number; bytesPerRow: number }> = {};
    for (const t of ['runner_stats_raw', 'runner_stats_1m', 'runner_stats_1h', 'runner_stat_series']) {
      const r = await store.db.query<{ n: string; b: string }>(`SELECT count(*) AS n, pg_total_relation_size('${t}') AS b FROM ${t}`);
      const rows = Number(r.rows[0]!.n);
      const bytes = Number(r.rows[0]!.b);
      tables[t] = { rows, bytes, bytesPerRow: round(bytes / Math.max(1, rows)) };
    }
    const perDay = { raw: DAY_S / 10, m: 1440, h: 24 };
    const bytesPerDay = perDay.raw * tables.runner_stats_raw!.bytesPerRow + perDay.m * tables.runner_stats_1m!.bytesPerRow + perDay.h * tables.runner_stats_1h!.bytesPerRow;
    const recordedS = HOURS * 3600;
    return {
      runners: RUNNERS,
      virtual_hours: HOURS,
      values_per_sample: flat.values.length,
      wall_s: round(wallS),
      control_plane_cpu_s: round(cpuS, 2),
      postgres_cpu_s: round(pgS, 2),
      // CPU seconds per runner per day, and the cores a fleet of 2,000 runners would keep busy.
      control_plane_cpu_s_per_runner_day: round((cpuS / RUNNERS) * (DAY_S / recordedS), 2),
      postgres_cpu_s_per_runner_day: round((pgS / RUNNERS) * (DAY_S / recordedS), 2),
      cores_for_2000_runners: { control_plane: round(((cpuS / RUNNERS) * 2000) / recordedS, 3), postgres: round(((pgS / RUNNERS) * 2000) / recordedS, 3) },
      tables,
      rows_per_runner_day: perDay,
      bytes_per_runner_day: Math.round(bytesPerDay),
      retained_bytes_per_runner_at_defaults: Math.round(
        2 * perDay.raw * tables.runner_stats_raw!.bytesPerRow + 30 * perDay.m * tables.runner_stats_1m!.bytesPerRow + 365 * perDay.h * tables.runner_stats_1h!.bytesPerRow,
      ),
    };
  } finally {
    await store.close();
    await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  }
}

async function reading(admin: pg.Client) {
  const name = `gantry_bench_stats_read_${process.pid}`;
  const url = await freshDb(admin, name);
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const now = Date.UTC(2026, 11, 2);
  const clock = new ManualClock(now);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-bench-stats-'));
  const config = loadConfig({ DATABASE_URL: url, GANTRY_DATA_DIR: dataDir, GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', LOG_LEVEL: 'warn', GANTRY_LOCAL_RUNNERS: '0', GANTRY_PG_QUERY_TIMEOUT_MS: '300000' });
  const cp = await startControlPlane(config, log, { clock, scheduler: false });
  try {
    const store = cp.store;
    const user = await store.accounts.createUser('bench@example.com');
    const { token } = await store.accounts.createToken(user.id, 'bench');
    const { cluster } = await store.clusters.create('bench-read', { userId: user.id });
    const layout = flatten(await hostSample(), undefined, 0).flat;
    const from = new Date(now - 30 * DAY_S * 1000);
    const t0 = performance.now();
    for (let i = 0; i < READ_RUNNERS; i++) {
      const id = await store.series.resolve({ runnerId: `read-runner-${i}`, clusterId: cluster.id, md5: layout.md5, metrics: layout.metrics, variants: layout.variants });
      // One row per minute; values vary by minute so the aggregates have something to do.
      await store.db.query(
        `INSERT INTO runner_stats_1m (series_id, ts, n, busy, avg, min, max, last)
         SELECT $1, t, 6, (extract(minute FROM t)::int % 3)::smallint, a, a, a, a
         FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') AS t,
           LATERAL (SELECT array_agg((k * 10 + extract(minute FROM t))::real ORDER BY k) AS a FROM generate_series(1, $4::int) AS k) v`,
        [id, from, new Date(now), layout.values.length],
      );
      if (i % 10 === 9) progress(`wrote 30 days of minutes for ${i + 1} runners`);
    }
    await store.db.query(`INSERT INTO runner_stats_rollup (level, done_through) VALUES ('1m', $1)`, [new Date(now)]);
    await store.db.query('ANALYZE');
    const writeS = (performance.now() - t0) / 1000;
    const minuteRows = Number((await store.db.query<{ n: string }>('SELECT count(*) AS n FROM runner_stats_1m')).rows[0]!.n);
    const call = async (body: Record<string, unknown>) => {
      const t = performance.now();
      const res = await fetch(`${cp.url}/2/workers.get_stats`, { method: 'POST', headers: { Authorization: `OAuth ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify(body) });
      const text = await res.text();
      if (res.status !== 200) throw new Error(`get_stats ${res.status}: ${text}`);
      return { ms: performance.now() - t, bytes: text.length, workers: (JSON.parse(text) as { workers: unknown[] }).workers.length };
    };
    const measure = async (what: string, body: Record<string, unknown>, times = 3) => {
      const runs = [];
      for (let i = 0; i < times; i++) runs.push(await call(body));
      const ms = runs.map((r) => r.ms).sort((a, b) => a - b);
      const median = ms[Math.floor(ms.length / 2)]!;
      progress(`${what}: median ${round(median)} ms`);
      return { runs: ms.length, median_ms: round(median), max_ms: round(ms.at(-1)!), reply_bytes: runs[0]!.bytes, workers: runs[0]!.workers };
    };
    const items = [{ key: 'cpu_total', category: 'avg' }, { key: 'cpu_total', category: 'max' }, { key: 'memory_used', category: 'avg' }];
    const span = { from_date: from.getTime() / 1000, to_date: now / 1000 };
    const out: Record<string, unknown> = { runners: READ_RUNNERS, minute_rows: minuteRows, write_s: round(writeS) };
    // A month of every runner's minutes (before the first hourly roll-up) is more than the API
    // reads in one question: it answers 400 before it runs. The store's read of it, timed once.
    const refused = await fetch(`${cp.url}/2/workers.get_stats`, { method: 'POST', headers: { Authorization: `OAuth ${token}`, 'Content-Type': 'application/json' }, body: JSON.stringify({ ...span, interval: 3600, items }) });
    const m0 = performance.now();
    const series = await store.series.read({
      clusterIds: [cluster.id],
      keys: ['cpu_total', 'memory_used'],
      split: false,
      intervalS: 3600,
      ranges: { raw: [new Date(now), new Date(now)], m: [from, new Date(now)], h: [new Date(now), new Date(now)] },
    });
    out.all_by_hour_from_minutes = { api_status: refused.status, store_read_ms: round(performance.now() - m0), buckets: series.reduce((n, x) => n + x.dates.length, 0) };
    progress(`all runners, 30 days by the hour, from minutes: the API answers ${refused.status}; the store reads it in ${round(performance.now() - m0)} ms`);
    out.one_by_10min_from_minutes = await measure('one runner, 30 days by 10 minutes', { ...span, interval: 600, items, worker_ids: ['read-runner-0'] });
    out.all_last_day_by_minute = await measure('all runners, the last day by the minute', { from_date: now / 1000 - 86400, to_date: now / 1000, interval: 60, items });
    out.one_split_by_hour = await measure('one runner, cores split, by the hour', { ...span, interval: 3600, items: [{ key: 'cpu_usage', category: 'max' }], worker_ids: ['read-runner-0'], split_by_variant: true });
    const r0 = performance.now();
    for (let t = from.getTime(); t < now; t += 24 * 3_600_000) await store.series.rollUp('1h', new Date(t), new Date(Math.min(now, t + 24 * 3_600_000)));
    out.hour_rollup_s = round((performance.now() - r0) / 1000);
    await store.db.query('ANALYZE');
    out.all_by_hour_from_hours = await measure('all runners, 30 days by the hour, from hours', { ...span, interval: 3600, items });
    return out;
  } finally {
    await cp.stop();
    fs.rmSync(dataDir, { recursive: true, force: true });
    await admin.query(`DROP DATABASE IF EXISTS ${name}`);
  }
}

async function main() {
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  try {
    const rec = await recording(admin);
    progress(`recording: ${JSON.stringify(rec)}`);
    const read = await reading(admin);
    const version = (await admin.query<{ server_version: string }>('SHOW server_version')).rows[0]!.server_version;
    process.stdout.write(`${JSON.stringify({ date: new Date().toISOString(), postgres: version, recording: rec, get_stats: read })}\n`);
  } finally {
    await admin.end();
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exitCode = 1;
});
