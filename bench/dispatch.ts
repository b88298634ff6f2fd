/**
 * Dispatch benchmark: prints one JSON line.
 *
 *   - floor: a plain Docker create+start of the test image through the engine API, the
 *     least any runner must spend before a container runs;
 *   - docker: queued→started latency (p50/p99) of single tasks on a warm runner whose
 *     executor is the real Docker path, and its overhead over the floor;
 *   - noop: end-to-end throughput (queued → complete, logs stored) of many no-op tasks through
 *     runner processes whose executor does nothing, and their queued→started latency;
 *   - outbox: the same throughput with an outcome webhook on every task (the outbox row the
 *     final status writes, and its delivery to a receiver in this process while tasks run),
 *     against the plain run, and how long the last delivery came after the last task.
 *
 * Runs against PostgreSQL (GANTRY_BENCH_PG_URL, an admin URL: a fresh database is made and
 * dropped) with runner processes on this host. Usage: npm run bench [-- --tasks 20000]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import Dockerode from 'dockerode';
import { createLogger } from '../lib/logger.ts';
import { loadConfig } from '../control-plane/config.ts';
import { openStore } from '../control-plane/store/index.ts';
import { loadSecretBox } from '../lib/secretbox.ts';
import { newId } from '../lib/ids.ts';
import { systemClock } from '../lib/clock.ts';
import { cpuSeconds, cpuSpent } from './cpu.ts';
import { freshDatabase } from './database.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const IMAGE = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';

const { values: args } = parseArgs({
  options: {
    tasks: { type: 'string', default: '20000' },
    'docker-tasks': { type: 'string', default: '40' },
    runners: { type: 'string', default: '1' },
    slots: { type: 'string', default: '256' },
    batch: { type: 'string', default: '1000' },
    'latency-tasks': { type: 'string', default: '200' },
  },
});
const N_NOOP = Number(args.tasks);
const N_DOCKER = Number(args['docker-tasks']);
const RUNNERS = Number(args.runners);
const SLOTS = Number(args.slots);
const BATCH = Number(args.batch);
const N_NOOP_LAT = Number(args['latency-tasks']);

const progress = (msg: string) => process.stderr.write(`[bench] ${msg}\n`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const round = (x: number) => Math.round(x * 100) / 100;

/** Docker create+start of the image, measured through the engine API (no Gantry at all). */
async function dockerFloor(n: number): Promise<number[]> {
  const docker = new Dockerode();
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    const c = await docker.createContainer({ Image: IMAGE, Cmd: ['true'], HostConfig: { NetworkMode: 'none', Init: true } });
    await c.start();
    out.push(performance.now() - t0);
    await c.wait();
    await c.remove({ force: true });
  }
  return out;
}

function spawnRunner(env: Record<string, string>): ChildProcess {
  // GANTRY_BENCH_PROFILE=DIR writes a CPU profile of each runner process there.
  const prof = process.env.GANTRY_BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.GANTRY_BENCH_PROFILE}`] : [];
  return spawn(process.execPath, [...prof, '--import', 'tsx', path.join(ROOT, 'runner/main.ts')], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'inherit', 'inherit'],
  });
}

/** `gantry start` on the bench's database, as its own process (as it runs in production). */
async function startControlPlaneProcess(env: Record<string, string>): Promise<{ proc: ChildProcess; url: string; grpcPort: number }> {
  const prof = process.env.GANTRY_BENCH_PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${process.env.GANTRY_BENCH_PROFILE}`] : [];
  const proc = spawn(process.execPath, [...prof, '--import', 'tsx', path.join(ROOT, 'control-plane/main.ts'), 'start'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', GANTRY_PORT: '0', GANTRY_GRPC_PORT: '0', GANTRY_LOCAL_RUNNERS: '0', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  let out = '';
  let ready = false;
  await new Promise<void>((resolve, reject) => {
    // The banner is on stderr (its logs, warnings and worse, go to this process's stdout).
    proc.stderr!.on('data', (d: Buffer) => {
      // Once it is up, whatever else it says on stderr goes to this process's stderr.
      if (ready) return void process.stderr.write(d);
      out += d.toString();
      if (out.includes('Press Ctrl-C to stop')) {
        ready = true;
        resolve();
      }
    });
    proc.on('exit', (code) => reject(new Error(`the control plane exited (${code}) before it was ready:\n${out}`)));
  });
  return { proc, url: /API base URL: (\S+)\/2\//.exec(out)![1]!, grpcPort: Number(/runner gRPC:\s+[\d.]+:(\d+)/.exec(out)![1]) };
}

async function main() {
  const admin = process.env.GANTRY_BENCH_PG_URL ?? process.env.GANTRY_TEST_PG_URL ?? 'postgres://gantry:gantry@127.0.0.1:5432/postgres';
  const db = await freshDatabase(admin, 'gantry_bench');
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'gantry-bench-'));
  const log = createLogger({ name: 'bench', level: 'warn', destination: process.stderr });
  const env = {
    DATABASE_URL: db.url,
    GANTRY_DATA_DIR: work,
    GANTRY_SECRET_KEYS: `bench:${randomBytes(32).toString('base64')}`,
    GANTRY_LOG_FLUSH_INTERVAL_MS: '20',
    GANTRY_PG_POOL_MAX: '20',
    GANTRY_WEBHOOK_ALLOW: '127.0.0.0/8',
  };
  // The control plane in its own process, so that this one's HTTP client and database reads
  // do not share its event loop; this process reaches the same database through a store.
  const config = loadConfig({ ...env, GANTRY_PG_POOL_MAX: '4' });
  const store = await openStore(config, log, systemClock, newId);
  store.useSecrets(loadSecretBox({ keys: config.secretKeys, dataDir: work, shared: true }));
  const children: ChildProcess[] = [];
  let outbox: Record<string, number> = {};
  let outboxCpu: Record<string, Record<string, number>> = {};
  try {
    progress('starting the control plane');
    const cp = await startControlPlaneProcess(env);
    children.push(cp.proc);
    const user = await store.accounts.createUser('bench@example.com');
    const project = await store.accounts.createProject(user.id, 'bench');
    const { token } = await store.accounts.createToken(user.id);
    const base = `${cp.url}/2/projects/${project.id}`;
    const auth = { Authorization: `OAuth ${token}` };
    const upload = async (name: string, command: string, extra: Record<string, unknown> = {}) => {
      const f = new FormData();
      f.append('data', JSON.stringify({ name, image: IMAGE, command, ...extra }));
      const r = await fetch(`${base}/codes`, { method: 'POST', headers: auth, body: f });
      if (r.status !== 200) throw new Error(await r.text());
    };
    const queue = async (code: string, n: number, cluster: string) => {
      const r = await fetch(`${base}/tasks`, {
        method: 'POST',
        headers: { ...auth, 'Content-Type': 'application/json' },
        body: JSON.stringify({ tasks: Array.from({ length: n }, (_, i) => ({ code_name: code, payload: `p${i}`, cluster })) }),
      });
      if (r.status !== 200) throw new Error(await r.text());
      return ((await r.json()) as { tasks: { id: string }[] }).tasks.map((t) => t.id);
    };
    const latencies = async (cluster: string) =>
      (
        await store.db.query<{ ms: number }>(
          `SELECT extract(epoch FROM (start_time - created_at)) * 1000 AS ms FROM tasks WHERE cluster = $1 AND start_time IS NOT NULL`,
          [cluster],
        )
      ).rows.map((r) => Number(r.ms));
    // The backlog is drained when the cluster has no queued task and no live lease: two
    // lookups at the head of small indexes, cheap enough to ask every few milliseconds
    // without loading the PostgreSQL being measured (a count of completed tasks would
    // read a table that grows by thousands of rows a second).
    const drained = async (cluster: string, timeoutMs: number) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = await store.db.query<{ busy: boolean }>(
          `SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'queued' AND cluster = $1)
             OR EXISTS (SELECT 1 FROM task_leases WHERE ended_at IS NULL AND cluster = $1) AS busy`,
          [cluster],
        );
        if (!r.rows[0]!.busy) return;
        if (Date.now() > deadline) throw new Error(`the ${cluster} backlog did not drain in time`);
        await new Promise((res) => setTimeout(res, 10));
      }
    };
    const waitDone = async (cluster: string, n: number, timeoutMs: number) => {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const r = await store.db.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM tasks WHERE cluster = $1 AND status = 'complete' AND log_complete`,
          [cluster],
        );
        if (r.rows[0]!.n >= n) return;
        if (Date.now() > deadline) throw new Error(`only ${r.rows[0]!.n} of ${n} tasks completed in time`);
        await new Promise((res) => setTimeout(res, 20));
      }
    };

    // 1. The floor.
    progress('measuring the Docker floor (create+start through the engine API)');
    const floor = await dockerFloor(Math.max(10, Math.min(N_DOCKER, 30)));

    // 2. Single tasks on a warm Docker runner.
    await upload('true', 'true');
    const docker = await store.clusters.create('bench-docker', { memoryMb: 128 });
    children.push(
      spawnRunner({
        GANTRY_CONTROL_PLANE: `127.0.0.1:${cp.grpcPort}`,
        GANTRY_CLUSTER_ID: docker.cluster.id,
        GANTRY_CLUSTER_TOKEN: docker.token,
        GANTRY_RUNNER_WORK_DIR: path.join(work, 'docker-runner'),
        GANTRY_RUNNER_SLOTS: '2',
        GANTRY_RUNNER_HEALTH_PORT: '-1',
      }),
    );
    progress(`docker path: ${N_DOCKER} tasks one at a time on a warm runner`);
    await queue('true', 1, 'bench-docker'); // warm-up: runner connected, image cached
    await waitDone('bench-docker', 1, 60000);
    await store.db.query(`DELETE FROM task_log_chunks WHERE task_id IN (SELECT id FROM tasks WHERE cluster = 'bench-docker')`);
    await store.db.query(`DELETE FROM task_leases WHERE cluster = 'bench-docker'`);
    await store.db.query(`DELETE FROM tasks WHERE cluster = 'bench-docker'`);
    for (let i = 0; i < N_DOCKER; i++) {
      await queue('true', 1, 'bench-docker');
      await waitDone('bench-docker', i + 1, 60000);
    }
    const dockerLat = await latencies('bench-docker');
    // The Docker runner's work is done; its stats sampling would only add noise from here on.
    const dockerRunner = children.pop()!;
    dockerRunner.kill(process.env.GANTRY_BENCH_PROFILE ? 'SIGINT' : 'SIGKILL');
    children.unshift(dockerRunner);

    // 3. Throughput of no-op tasks through runner processes.
    await upload('noop', 'true');
    const noop = await store.clusters.create('bench-noop');
    const noopRunners: ChildProcess[] = [];
    for (let i = 0; i < RUNNERS; i++) {
      children.push(
        spawnRunner({
          GANTRY_CONTROL_PLANE: `127.0.0.1:${cp.grpcPort}`,
          GANTRY_CLUSTER_ID: noop.cluster.id,
          GANTRY_CLUSTER_TOKEN: noop.token,
          GANTRY_RUNNER_WORK_DIR: path.join(work, `noop-runner-${i}`),
          GANTRY_RUNNER_SLOTS: String(SLOTS),
          GANTRY_RUNNER_EXECUTOR: 'noop',
          GANTRY_RUNNER_HEALTH_PORT: '-1',
        }),
      );
      noopRunners.push(children.at(-1)!);
    }
    // Where each throughput stage's CPU went (the two cores are shared by all of these).
    const cpu = () =>
      cpuSeconds({ control_plane: () => [cp.proc.pid!], runners: () => noopRunners.map((r) => r.pid!), bench: () => [process.pid] });
    await queue('noop', 1, 'bench-noop');
    await waitDone('bench-noop', 1, 60000);
    progress(`no-op path: ${N_NOOP_LAT} tasks one at a time (latency on a warm runner)`);
    // One task per request, one every 5 ms: a light steady load on a warm system, each task
    // finding the runner idle (a no-op task is done in about a millisecond).
    for (let i = 0; i < N_NOOP_LAT; i++) {
      await queue('noop', 1, 'bench-noop');
      await new Promise((res) => setTimeout(res, 5));
    }
    await waitDone('bench-noop', N_NOOP_LAT + 1, 60000);
    const noopSingle = await latencies('bench-noop');
    // Where the single-task latency goes: queued (the API's clock) → lease granted (the
    // claim's clock) → started (the runner's clock; one host, one clock).
    const split = (
      await store.db.query<{ claim: number; start: number }>(
        `SELECT extract(epoch FROM (l.granted_at - t.created_at)) * 1000 AS claim,
           extract(epoch FROM (t.start_time - l.granted_at)) * 1000 AS start
         FROM tasks t JOIN task_leases l ON l.task_id = t.id AND l.attempt = t.attempt
         WHERE t.cluster = 'bench-noop' AND t.start_time IS NOT NULL`,
      )
    ).rows;
    progress(`no-op path: ${N_NOOP} tasks through ${RUNNERS} runner processes × ${SLOTS} slots (throughput)`);
    await store.db.query(`UPDATE tasks SET cluster = 'bench-noop-done' WHERE cluster = 'bench-noop'`);
    // Planner statistics as a running system has them (autovacuum's analyze lags a fresh
    // database by a minute; without it the first claims may plan for an empty table).
    await store.db.query('ANALYZE');
    const c0 = cpu();
    const t0 = performance.now();
    for (let done = 0; done < N_NOOP; done += BATCH) await queue('noop', Math.min(BATCH, N_NOOP - done), 'bench-noop');
    const queuedMs = performance.now() - t0;
    await drained('bench-noop', 600000);
    await waitDone('bench-noop', N_NOOP, 60000);
    const totalMs = performance.now() - t0;
    const plainCpu = cpuSpent(c0, cpu());
    const noopLat = await latencies('bench-noop');

    // 4. The same with an outcome webhook on every task, to a receiver in this process.
    progress(`outbox: ${N_NOOP} tasks with an outcome webhook each (throughput against the plain run)`);
    let received = 0;
    let lastDeliveryAt = 0;
    const receiver = http.createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        received++;
        lastDeliveryAt = performance.now();
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
    try {
      const secret = await fetch(`${base}/webhook_secret`, { method: 'POST', headers: { ...auth, 'Content-Type': 'application/json' }, body: '{}' });
      if (secret.status !== 200) throw new Error(await secret.text());
      await upload('noop-hooked', 'true', { webhooks: { finishes: [`http://127.0.0.1:${(receiver.address() as AddressInfo).port}/hook`] } });
      await store.db.query(`UPDATE tasks SET cluster = 'bench-noop-done' WHERE cluster = 'bench-noop'`);
      await store.db.query('ANALYZE');
      const hc0 = cpu();
      const h0 = performance.now();
      for (let done = 0; done < N_NOOP; done += BATCH) await queue('noop-hooked', Math.min(BATCH, N_NOOP - done), 'bench-noop');
      await drained('bench-noop', 600000);
      await waitDone('bench-noop', N_NOOP, 60000);
      const hookedMs = performance.now() - h0;
      const hc1 = cpu();
      const deadline = Date.now() + 600000;
      while (received < N_NOOP && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
      if (received < N_NOOP) throw new Error(`only ${received} of ${N_NOOP} webhooks arrived`);
      outbox = {
        noop_with_webhook_tasks_per_s: Math.round((N_NOOP / hookedMs) * 1000),
        rate_vs_plain: round((N_NOOP / hookedMs) / (N_NOOP / totalMs)),
        webhooks_delivered: received,
        last_delivery_after_last_task_ms: Math.round(Math.max(0, lastDeliveryAt - (h0 + hookedMs))),
      };
      outboxCpu = { plain: plainCpu, with_webhook: cpuSpent(hc0, hc1), deliveries_after: cpuSpent(hc1, cpu()) };
    } finally {
      receiver.close();
    }

    const p50 = pct(dockerLat, 50);
    const p99 = pct(dockerLat, 99);
    const f50 = pct(floor, 50);
    const f99 = pct(floor, 99);
    const result = {
      date: new Date().toISOString(),
      machine: `${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB`,
      database: 'postgresql',
      floor_docker_create_start_ms: { p50: round(f50), p99: round(f99), n: floor.length },
      docker_queued_to_started_ms: { p50: round(p50), p99: round(p99), n: dockerLat.length },
      docker_overhead_over_floor_ms: { p50: round(p50 - f50), p99: round(p99 - f99) },
      noop_throughput_tasks_per_s: Math.round((N_NOOP / totalMs) * 1000),
      noop_tasks: N_NOOP,
      noop_queue_api_ms: Math.round(queuedMs),
      noop_single_queued_to_started_ms: { p50: round(pct(noopSingle, 50)), p99: round(pct(noopSingle, 99)), n: noopSingle.length },
      noop_single_split_ms: {
        queued_to_granted_p50: round(pct(split.map((r) => Number(r.claim)), 50)),
        granted_to_started_p50: round(pct(split.map((r) => Number(r.start)), 50)),
      },
      noop_backlog_queued_to_started_ms: { p50: round(pct(noopLat, 50)), p99: round(pct(noopLat, 99)) },
      outbox,
      outbox_cpu_s: outboxCpu,
      runners: RUNNERS,
      slots_per_runner: SLOTS,
    };
    process.stdout.write(JSON.stringify(result) + '\n');
  } finally {
    // SIGINT lets a profiled process write its profile; SIGKILL follows for the rest.
    for (const c of children) c.kill(process.env.GANTRY_BENCH_PROFILE ? 'SIGINT' : 'SIGKILL');
    if (process.env.GANTRY_BENCH_PROFILE) await new Promise((r) => setTimeout(r, 3000));
    for (const c of children) c.kill('SIGKILL');
    await store.close();
    if (!process.env.GANTRY_BENCH_KEEP_DB) await db.drop().catch(() => undefined);
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
