/**
 * Cross-replica wake-up benchmark (README.md, "Benchmark"; the wake-ups it measures are in
 * "Several replicas (high availability)"): prints one JSON line.
 *
 * Two control-plane replicas on one PostgreSQL and one etcd; one idle runner (no-op executor)
 * connected to replica B only; the dispatcher's safety-net tick is ten minutes, so only the
 * etcd event can deliver. Measures, one task at a time:
 *   - offer: a task queued through replica A's API (reply received) → its lease granted by B;
 *   - cancel: a cancel accepted by A for a task running on B's runner → the task `cancelled`.
 * Targets: offer p99 ≤ 100 ms, cancel ≤ 1 s.
 *
 * Usage: npm run bench:wakeup [-- --tasks 200]   (GANTRY_BENCH_PG_URL, GANTRY_BENCH_ETCD)
 */
import os from 'node:os';
import path from 'node:path';
import fs from 'node:fs';
import { parseArgs } from 'node:util';
import pg from 'pg';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { startControlPlane } from '../control-plane/start.ts';
import { benchAccount, benchRunner } from './rig.ts';
import { pct, progress, round } from './stats.ts';

const { values: args } = parseArgs({ options: { tasks: { type: 'string', default: '200' }, cancels: { type: 'string', default: '30' } } });
const N = Number(args.tasks);
const N_CANCEL = Number(args.cancels);
const ADMIN = process.env.GANTRY_BENCH_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
const ETCD = process.env.GANTRY_BENCH_ETCD ?? 'http://127.0.0.1:2379';

async function main() {
  const name = `gantry_wakeup_${process.pid}`;
  const admin = new pg.Client({ connectionString: ADMIN });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  const u = new URL(ADMIN);
  u.pathname = `/${name}`;
  const dbUrl = u.toString();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-wakeup-'));
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const env = {
    DATABASE_URL: dbUrl,
    ETCD_ENDPOINTS: ETCD,
    GANTRY_ETCD_PREFIX: `/gantry-bench-${process.pid}/`,
    GANTRY_PORT: '0',
    GANTRY_GRPC_PORT: '0',
    GANTRY_LOCAL_RUNNERS: '0',
    GANTRY_DISPATCH_TICK_MS: '600000',
    GANTRY_DATA_DIR: dir,
    LOG_LEVEL: 'warn',
  };
  const a = await startControlPlane(loadConfig({ ...env, GANTRY_SERVER_ID: 'a' }), log);
  const b = await startControlPlane(loadConfig({ ...env, GANTRY_SERVER_ID: 'b' }), log);
  const store = a.store;
  const { project, token, cluster, clusterToken } = await benchAccount(store, 64);
  const runner = await benchRunner(b.grpcPort, { id: cluster.id, token: clusterToken }, dir, log, { GANTRY_RUNNER_SLOTS: '4', GANTRY_RUNNER_EXECUTOR: 'noop' });
  const call = async (method: string, p: string, json?: unknown, form?: FormData) => {
    const res = await fetch(`${a.url}/2/projects/${project.id}${p}`, {
      method,
      headers: { Authorization: `OAuth ${token}`, ...(json ? { 'Content-Type': 'application/json' } : {}) },
      body: json ? JSON.stringify(json) : form,
    });
    return (await res.json()) as any;
  };
  const form = new FormData();
  form.append('data', JSON.stringify({ name: 'w', image: 'gantry-test/busybox:latest' }));
  await call('POST', '/codes', undefined, form);
  const until = async (fn: () => Promise<boolean>) => {
    for (let i = 0; i < 20000 && !(await fn()); i++) await new Promise((r) => setTimeout(r, 1));
  };
  await until(async () => (await store.db.query(`SELECT 1 FROM runners WHERE connected AND server_id = 'b'`)).rows.length > 0);

  progress(`offer latency over ${N} tasks (queued on a, runner on b)`);
  const offer: number[] = [];
  for (let i = 0; i < N; i++) {
    const r = await call('POST', '/tasks', { tasks: [{ code_name: 'w', payload: '' }] });
    const at = Date.now();
    const id = r.tasks[0].id as string;
    let granted: Date | undefined;
    await until(async () => {
      granted = (await store.db.query<{ granted_at: Date }>('SELECT granted_at FROM task_leases WHERE task_id = $1', [id])).rows[0]?.granted_at;
      return granted !== undefined;
    });
    offer.push(Math.max(0, granted!.getTime() - at));
    await until(async () => (await store.db.query(`SELECT 1 FROM tasks WHERE id = $1 AND status = 'complete'`, [id])).rows.length > 0);
  }

  progress(`cancel latency over ${N_CANCEL} tasks`);
  const cancel: number[] = [];
  for (let i = 0; i < N_CANCEL; i++) {
    const r = await call('POST', '/tasks', { tasks: [{ code_name: 'w', payload: '{"noop_sleep_ms": 60000}' }] });
    const id = r.tasks[0].id as string;
    await until(async () => (await store.db.query(`SELECT 1 FROM tasks WHERE id = $1 AND status = 'running'`, [id])).rows.length > 0);
    const t0 = Date.now();
    await call('POST', `/tasks/${id}/cancel`);
    await until(async () => (await store.db.query(`SELECT 1 FROM tasks WHERE id = $1 AND status = 'cancelled'`, [id])).rows.length > 0);
    cancel.push(Date.now() - t0);
  }

  await runner.stop();
  await b.stop();
  await a.stop();
  await admin.query(`DROP DATABASE ${name} WITH (FORCE)`);
  await admin.end();
  fs.rmSync(dir, { recursive: true, force: true });
  process.stdout.write(
    JSON.stringify({
      date: new Date().toISOString(),
      cpus: os.cpus().length,
      offer_ms: { n: offer.length, p50: round(pct(offer, 50)), p99: round(pct(offer, 99)), max: round(Math.max(...offer)) },
      cancel_ms: { n: cancel.length, p50: round(pct(cancel, 50)), p99: round(pct(cancel, 99)), max: round(Math.max(...cancel)) },
    }) + '\n',
  );
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
