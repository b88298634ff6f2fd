import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import Dockerode from 'dockerode';
import type { Test } from 'tap';
import type { TestApi } from './api.ts';
import { tempDir } from './db.ts';
import { freePort } from './pg-instance.ts';
import { runnerEnv, spawnRunner, until, type RunnerProcess } from './runner.ts';
import { RUN_ID } from './services.ts';

/** Short protocol timers for fault tests (proto/README.md, 5 Timers, scaled down). */
export const FAST_TIMERS = {
  GANTRY_BEAT_INTERVAL_MS: '200',
  GANTRY_LEASE_TTL_MS: '2500',
  GANTRY_ACCEPT_DEADLINE_MS: '1000',
  GANTRY_SWEEP_INTERVAL_MS: '100',
  GANTRY_LOG_FLUSH_INTERVAL_MS: '50',
  GANTRY_CANCEL_GRACE_MS: '500',
  GANTRY_RECONNECT_BASE_MS: '100',
  GANTRY_RECONNECT_CAP_MS: '1000',
};

export const FINAL = ['complete', 'error', 'timeout', 'cancelled', 'killed'];

export interface TaskRow {
  id: string;
  status: string;
  msg: string | null;
  exit_code: number | null;
  run_times: number;
  runner_losses: number;
  runner_id: string | null;
  lease_id: string | null;
  attempt: number;
  log_complete: boolean;
  cancel_requested_at: Date | null;
}

export interface LeaseRow {
  id: string;
  attempt: number;
  runner_id: string;
  state: string;
  outcome: string | null;
  container_id: string | null;
  granted_at: Date;
  expires_at: Date;
  started_at: Date | null;
  ended_at: Date | null;
}

/** Queues tasks of `code` through the API; returns their ids. */
export async function queueTasks(api: TestApi, code: string, n = 1, task: Record<string, unknown> = {}): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i += 1000) {
    const batch = Array.from({ length: Math.min(1000, n - i) }, () => ({ code_name: code, ...task }));
    const r = await api.user.project('POST', '/tasks', { json: { tasks: batch } });
    if (r.status !== 200) throw new Error(`queue failed: ${r.status} ${r.text}`);
    ids.push(...(r.body.tasks as { id: string }[]).map((x) => x.id));
  }
  return ids;
}

export async function taskRow(api: TestApi, id: string): Promise<TaskRow> {
  return (
    await api.store.db.query<TaskRow>(
      `SELECT id, status, msg, exit_code, run_times, runner_losses, runner_id, lease_id, attempt, log_complete, cancel_requested_at
       FROM tasks WHERE id = $1`,
      [id],
    )
  ).rows[0]!;
}

/** The task's lease history, oldest first. */
export async function leasesOf(api: TestApi, taskId: string): Promise<LeaseRow[]> {
  return (
    await api.store.db.query<LeaseRow>(
      `SELECT id, attempt, runner_id, state, outcome, container_id, granted_at, expires_at, started_at, ended_at
       FROM task_leases WHERE task_id = $1 ORDER BY attempt, granted_at`,
      [taskId],
    )
  ).rows;
}

/**
 * Waits for a final status; returns the task row. With `log`, also for the log to be
 * complete (a runner's result can be recorded a moment before its log's final frame).
 */
export async function finalOf(api: TestApi, id: string, timeoutMs = 60000, o: { log?: boolean } = {}): Promise<TaskRow> {
  return until(
    `task ${id} final${o.log ? ' with its log complete' : ''}`,
    async () => {
      const r = await taskRow(api, id);
      return FINAL.includes(r.status) && (!o.log || r.log_complete) ? r : undefined;
    },
    timeoutMs,
  );
}

/** A value from the control plane's /metrics (0 when the series does not exist yet). */
export async function metric(api: TestApi, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricAt(`${api.url}/metrics`, name, labels);
}

/** The sum of a metric's series matching `labels` in the Prometheus text page at `url`. */
export async function metricAt(url: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricIn(await (await fetch(url)).text(), name, labels);
}

/** The sum of a metric's series matching `labels` in a Prometheus text page. */
export function metricIn(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const kv of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have[kv[1]!] = kv[2]!;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[4]);
  }
  return sum;
}

/** The runner's /healthz: status and body. */
export async function healthz(port: number): Promise<{ status: number; body: { ok: boolean; reason: string; state: string; busy: number } }> {
  const r = await fetch(`http://127.0.0.1:${port}/healthz`);
  return { status: r.status, body: (await r.json()) as { ok: boolean; reason: string; state: string; busy: number } };
}

const docker = new Dockerode();

/** Containers (running or not) of a task, found by the runner's labels. */
export async function containersOfTask(taskId: string): Promise<Dockerode.ContainerInfo[]> {
  return docker.listContainers({ all: true, filters: { label: [`gantry.task=${taskId}`] } });
}

export async function containerState(id: string): Promise<string | undefined> {
  try {
    return (await docker.getContainer(id).inspect()).State.Status;
  } catch {
    return undefined;
  }
}

export interface SpawnedRunner extends RunnerProcess {
  runnerId: string;
  healthPort: number;
  workDir: string;
}

/**
 * A real runner process (Docker executor unless `extra` says otherwise) joined to `api`;
 * resolves once the control plane holds its session. Killed at teardown.
 */
export async function spawnRunnerProcess(
  t: Test,
  api: TestApi,
  cluster: { id: string; token: string },
  extra: Record<string, string> = {},
  o: { waitConnected?: boolean } = {},
): Promise<SpawnedRunner> {
  const workDir = tempDir(t, 'gantry-runner-');
  const healthPort = await freePort();
  // Its containers carry a label of their own and are removed once it is killed (teardowns
  // run last-registered first).
  const label = `gantry.test-runner=${randomUUID().slice(0, 8)}`;
  t.teardown(async () => {
    for (const c of await docker.listContainers({ all: true, filters: { label: [label] } })) {
      await docker.getContainer(c.Id).remove({ force: true }).catch(() => undefined);
    }
  });
  const rp = spawnRunner(
    t,
    runnerEnv(api, cluster, workDir, {
      GANTRY_RUNNER_SLOTS: '1',
      GANTRY_RUNNER_HEALTH_PORT: String(healthPort),
      GANTRY_RUNNER_LABELS: `gantry.test-run=${RUN_ID},${label}`,
      LOG_LEVEL: 'info',
      ...extra,
    }),
  );
  const idFile = path.join(workDir, 'runner-id');
  const runnerId = await until(
    'runner id file',
    async () => {
      if (rp.proc.exitCode !== null) throw new Error(`runner exited early:\n${rp.output()}`);
      return fs.existsSync(idFile) ? fs.readFileSync(idFile, 'utf8').trim() || undefined : undefined;
    },
    30000,
  );
  if (o.waitConnected ?? true) {
    await until(
      `runner ${runnerId} connected`,
      async () => {
        if (rp.proc.exitCode !== null) throw new Error(`runner exited early:\n${rp.output()}`);
        return api.cp.dispatcher.session(runnerId)?.state === 'open';
      },
      30000,
    );
  }
  return { ...rp, runnerId, healthPort, workDir };
}

/**
 * The most leases running at any one instant, from their [started_at, ended_at] history (a
 * lease that ends at the instant another starts does not overlap it). A lease still running
 * counts until now.
 */
export function maxRunning(leases: readonly { started_at: Date; ended_at: Date | null }[]): number {
  const edges = leases.flatMap((l) => [
    { at: l.started_at.getTime(), d: 1 },
    { at: (l.ended_at ?? new Date()).getTime(), d: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.d - b.d);
  let running = 0;
  let max = 0;
  for (const e of edges) max = Math.max(max, (running += e.d));
  return max;
}
