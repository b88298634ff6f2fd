import { systemClock, type Clock } from '../lib/clock.ts';
import { newId } from '../lib/ids.ts';
import { startWith } from '../lib/lifecycle.ts';
import type { Logger } from '../lib/logger.ts';
import { loadSecretBox } from '../lib/secretbox.ts';
import { localInstanceCap } from '../autoscaler/index.ts';
import { ensureBootstrap, ensureLocalCluster, type Bootstrap } from './bootstrap.ts';
import type { ControlPlaneConfig } from './config.ts';
import { startControlPlane, type ControlPlane } from './start.ts';
import { openStore } from './store/index.ts';
import { startAdminSocket } from './admin-socket.ts';
import { isLoopback } from './http/server.ts';

/** `gantry start`: the control plane with what a first run on one machine needs. */
export interface Embedded {
  readonly cp: ControlPlane;
  /** The first user, project and token (shown on every start), if this data directory made them. */
  readonly boot: Bootstrap | undefined;
  /** Runner processes the default cluster keeps on this host (0: none), and their slots each. */
  readonly localRunners: { count: number; slots: number };
  /** The lines printed once the control plane is up: where the API is, which clusters have runners, how to use it. */
  banner(): Promise<string>;
  /** Drains the local runners (their results still reach the gateway), then stops the control plane and closes the store. */
  stop(deadline?: number): Promise<void>;
}

/**
 * The embedded start: opens the store, then creates the first user, project and token on
 * an empty store and configures the default cluster to scale local runner processes — all
 * before the control plane starts, so the autoscaler's first tick already brings them up.
 */
export async function startEmbedded(config: ControlPlaneConfig, log: Logger, clock?: Clock): Promise<Embedded> {
  return startWith(async (releases) => {
    const store = await openStore(config, log.child({ component: 'store' }), clock ?? systemClock, newId);
    releases.add('store', () => store.close());
    store.useSecrets(
      loadSecretBox({ keys: config.secretKeys, dataDir: config.dataDir, shared: Boolean(config.databaseUrl), warn: (m, f) => log.warn(f, m) }),
    );
    const boot = await ensureBootstrap(store, config.dataDir, log);
    const slots = config.localRunnerSlots;
    let local: Awaited<ReturnType<typeof ensureLocalCluster>> | undefined;
    if (config.localRunners > 0) {
      // The default cluster scales with the local provider: runner processes on this host,
      // at least GANTRY_LOCAL_RUNNERS of them, at most what the host holds.
      local = await ensureLocalCluster(store, config.dataDir, log);
      const cap = localInstanceCap(512, slots, config.localRunners);
      await store.autoscale.configureLocal(local.clusterId, {
        runnersMin: config.localRunners * slots,
        runnersMax: cap * slots,
        runnersPerInstance: slots,
        ...(boot ? { ownerId: boot.userId } : {}),
      });
    } else {
      const existing = await store.clusters.byName('default');
      if (existing) await store.autoscale.unconfigureLocal(existing.id);
    }
    const token = local?.token;
    const localId = local?.clusterId;
    const cp = await startControlPlane(config, log, {
      store,
      ...(clock ? { clock } : {}),
      ...(local ? { localToken: (id: string) => (id === localId ? token : undefined) } : {}),
    });
    releases.add('control plane', (deadline?: number) => cp.stop(deadline));
    // PGlite is this process's alone: admin commands run meanwhile come through here.
    if (!config.databaseUrl) {
      const admin = await startAdminSocket(config.dataDir, store, { instancesChanged: () => cp.hub.instancesChanged() }, log.child({ component: 'admin' }));
      if (admin) releases.add('admin socket', () => admin.close());
    }
    // Local runners drain while the gateway still takes their results; the rest after.
    releases.add('local runners', () => cp.autoscaler.close({ stopLocal: true }));
    const localRunners = { count: local ? config.localRunners : 0, slots };
    return {
      cp,
      boot,
      localRunners,
      banner: async () => banner(config, cp, boot, localRunners, await runnersByCluster(cp)),
      stop: (deadline?: number) => releases.releaseAll(deadline),
    };
  });
}

/** Connected runners by cluster name. */
async function runnersByCluster(cp: ControlPlane): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  for (const r of await cp.store.runners.list()) if (r.state !== 'disconnected') out.set(r.cluster, (out.get(r.cluster) ?? 0) + 1);
  return out;
}

function banner(
  config: ControlPlaneConfig,
  cp: ControlPlane,
  boot: Bootstrap | undefined,
  local: { count: number; slots: number },
  runners: Map<string, number>,
): string {
  const clusters = [...runners].map(([name, n]) => `${name} (${n} runner${n === 1 ? '' : 's'} connected)`);
  if (local.count > 0 && !runners.has('default')) clusters.unshift('default (its local runners are starting)');
  const lines = [
    '',
    `Gantry is running (${cp.store.db.engine}${config.databaseUrl ? '' : `, data in ${config.dataDir}`}).`,
    `  API base URL: ${cp.url}/2/`,
    `  runner gRPC:  127.0.0.1:${cp.grpcPort}` +
      (local.count > 0 ? ` (the default cluster scales local runner processes: at least ${local.count}, ${local.slots} slots each)` : ''),
    ...(config.tls || isLoopback(config.host)
      ? []
      : [`  warning:      the API listens on ${config.host} without TLS: tokens cross the network in clear (set GANTRY_TLS_CERT and GANTRY_TLS_KEY, or serve it behind a TLS proxy)`]),
    `  runners in:   ${clusters.length > 0 ? clusters.join(', ') : 'no cluster yet: tasks wait until a runner joins (see README.md, "Runners")'}`,
  ];
  if (boot) {
    lines.push(
      `  project id:   ${boot.projectId}`,
      `  token:        ${boot.token}`,
      '',
      'Try it:',
      `  curl -s -H 'Authorization: OAuth ${boot.token}' ${cp.url}/2/projects/${boot.projectId}/codes`,
      'or point an IronWorker client at it (iron.json):',
      `  {"host": "${new URL(cp.url).hostname}", "port": ${new URL(cp.url).port || 80}, "protocol": "http", "project_id": "${boot.projectId}", "token": "${boot.token}"}`,
    );
  } else {
    lines.push('  Create a token with: npm run gantry -- token create --user <email>');
  }
  lines.push('', 'Press Ctrl-C to stop.', '');
  return lines.join('\n');
}
