import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { silentLogger } from '../../lib/logger.ts';
import { loadRunnerConfig } from '../../runner/config.ts';
import { startRunner, type Runner } from '../../runner/start.ts';
import type { TestApi } from './api.ts';
import { tempDir } from './db.ts';
import { RUN_ID } from './services.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export const TEST_IMAGE = process.env.GANTRY_TEST_IMAGE ?? 'gantry-test/busybox:latest';

/** The cluster runners join; created once per API. */
export async function testCluster(api: TestApi, name = 'default', memoryMb = 128) {
  const existing = await api.store.clusters.byName(name);
  if (existing) {
    const token = await api.store.clusters.rotateToken(existing.id);
    return { id: existing.id, token: token! };
  }
  const { cluster, token } = await api.store.clusters.create(name, { memoryMb });
  return { id: cluster.id, token };
}

/** Environment for a runner joining `api`'s gateway. */
export function runnerEnv(api: TestApi, cluster: { id: string; token: string }, workDir: string, extra: Record<string, string> = {}) {
  return {
    GANTRY_CONTROL_PLANE: `127.0.0.1:${api.cp.grpcPort}`,
    GANTRY_CLUSTER_ID: cluster.id,
    GANTRY_CLUSTER_TOKEN: cluster.token,
    GANTRY_RUNNER_WORK_DIR: workDir,
    GANTRY_RUNNER_SLOTS: '2',
    GANTRY_RUNNER_HEALTH_PORT: '0',
    GANTRY_RUNNER_LABELS: `gantry.test-run=${RUN_ID}`,
    LOG_LEVEL: 'silent',
    ...extra,
  };
}

/** A runner agent in this process; stopped at teardown. */
export async function startTestRunner(
  t: Test,
  api: TestApi,
  o: { cluster?: { id: string; token: string }; env?: Record<string, string> } = {},
): Promise<Runner> {
  const cluster = o.cluster ?? (await testCluster(api));
  const config = loadRunnerConfig(runnerEnv(api, cluster, tempDir(t, 'gantry-runner-'), o.env));
  const r = await startRunner(config, silentLogger());
  t.teardown(() => r.stop());
  return r;
}

export interface RunnerProcess {
  proc: ChildProcess;
  output(): string;
  exited: Promise<number | string>;
}

/** A runner as a real process (for kill -9, SIGSTOP and signal tests); killed at teardown. */
export function spawnRunner(t: Test, env: Record<string, string>): RunnerProcess {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'runner/main.ts')], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | string>((resolve) => proc.on('exit', (code, sig) => resolve(code ?? sig ?? -1)));
  t.teardown(async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGCONT');
      proc.kill('SIGKILL');
      await exited;
    }
  });
  return { proc, output: () => out, exited };
}

/** Polls `fn` until it returns a truthy value (an event seen through the API), or fails at the deadline. */
export async function until<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30000, everyMs = 50): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
