import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../lib/logger.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export interface LocalRunnerOptions {
  count: number;
  grpcPort: number;
  clusterId: string;
  token: string;
  /** Each runner works in `<dataDir>/runners/<n>`, which also keeps its stable id. */
  dataDir: string;
  logLevel: string;
  env?: Record<string, string>;
}

/**
 * Runner processes on this host for the embedded start: each is `gantry runner` as a child
 * process, restarted with backoff if it dies, drained (SIGTERM) on stop. The autoscaler's
 * `local` provider takes this over when clusters arrive.
 */
export function startLocalRunners(o: LocalRunnerOptions, log: Logger) {
  const children = new Map<number, ChildProcess>();
  let stopping = false;
  const launch = (n: number, failures: number) => {
    const workDir = path.join(o.dataDir, 'runners', String(n));
    fs.mkdirSync(workDir, { recursive: true });
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'runner/main.ts')], {
      cwd: ROOT,
      env: {
        ...process.env,
        GANTRY_CONTROL_PLANE: `127.0.0.1:${o.grpcPort}`,
        GANTRY_CLUSTER_ID: o.clusterId,
        GANTRY_CLUSTER_TOKEN: o.token,
        GANTRY_RUNNER_WORK_DIR: workDir,
        GANTRY_RUNNER_HEALTH_PORT: process.env.GANTRY_RUNNER_HEALTH_PORT ?? '0',
        LOG_LEVEL: o.logLevel,
        ...o.env,
      },
      stdio: ['ignore', 'inherit', 'inherit'],
    });
    children.set(n, child);
    const started = Date.now();
    child.on('exit', (code, sig) => {
      children.delete(n);
      if (stopping) return;
      const f = Date.now() - started > 60_000 ? 0 : failures + 1;
      const delay = Math.min(30_000, 500 * 2 ** f);
      log.warn({ runner: n, code, signal: sig, restartInMs: delay }, 'local runner exited; restarting');
      setTimeout(() => !stopping && launch(n, f), delay).unref();
    });
  };
  for (let i = 0; i < o.count; i++) launch(i, 0);
  log.info({ count: o.count }, 'local runners started');
  return {
    /** Drains every local runner (running tasks finish) and waits for them to exit. */
    async stop(timeoutMs = 30_000): Promise<void> {
      stopping = true;
      await Promise.all(
        [...children.values()].map(
          (c) =>
            new Promise<void>((resolve) => {
              if (c.exitCode !== null || c.signalCode !== null) return resolve();
              const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
              c.once('exit', () => {
                clearTimeout(t);
                resolve();
              });
              c.kill('SIGTERM');
            }),
        ),
      );
    },
  };
}
