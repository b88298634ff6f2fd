import path from 'node:path';
import type { Logger } from '../lib/logger.ts';
import type { Store } from '../control-plane/store/index.ts';
import { loadRunnerConfig } from '../runner/config.ts';
import { startRunner, type Runner } from '../runner/start.ts';

/** A user with a project and a token, and the `default` cluster, for a benchmark's store. */
export async function benchAccount(store: Store, memoryMb: number) {
  const user = await store.accounts.createUser('bench@example.com');
  const project = await store.accounts.createProject(user.id, 'bench');
  const { token } = await store.accounts.createToken(user.id, 'bench');
  const { cluster, token: clusterToken } = await store.clusters.create('default', { memoryMb });
  return { project, token, cluster, clusterToken };
}

/** A runner agent in this process joined to the gateway at `grpcPort`; `env` adds to its configuration. */
export function benchRunner(grpcPort: number, cluster: { id: string; token: string }, dir: string, log: Logger, env: Record<string, string>): Promise<Runner> {
  return startRunner(
    loadRunnerConfig({
      GANTRY_CONTROL_PLANE: `127.0.0.1:${grpcPort}`,
      GANTRY_CLUSTER_ID: cluster.id,
      GANTRY_CLUSTER_TOKEN: cluster.token,
      GANTRY_RUNNER_WORK_DIR: path.join(dir, 'runner'),
      GANTRY_RUNNER_HEALTH_PORT: '-1',
      LOG_LEVEL: 'warn',
      ...env,
    }),
    log,
  );
}
