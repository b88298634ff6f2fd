import { systemClock } from '../lib/clock.ts';
import { ConfigError } from '../lib/errors.ts';
import { newId } from '../lib/ids.ts';
import { createLogger } from '../lib/logger.ts';
import { runAdmin, UsageError, USAGE } from './admin.ts';
import { ensureBootstrap, ensureLocalCluster } from './bootstrap.ts';
import { localInstanceCap } from '../autoscaler/sources.ts';
import { loadConfig, redactedConfig } from './config.ts';
import { startControlPlane } from './server.ts';
import { openStore } from './store/index.ts';
import { loadSecretBox } from '../lib/secretbox.ts';
import { DataDirInUseError } from './store/db.ts';
import { StoreUnavailableError } from './errors.ts';

/** The `gantry` command: the only place that touches process (signals, exit codes). */
async function main(argv: string[]): Promise<number> {
  const cmd = argv[0] ?? 'start';
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const config = loadConfig(process.env);
  const log = createLogger({ name: 'gantry', level: cmd === 'start' ? config.logLevel : 'warn' });

  if (cmd !== 'start') {
    const store = await openStore(config, log, systemClock, newId);
    store.clusters.useSecrets(loadSecretBox({ keys: config.secretKeys, dataDir: config.dataDir, shared: Boolean(config.databaseUrl) }));
    store.quotas.useDefaults(config.quotas, config.quotaRetryAfterS);
    try {
      process.stdout.write((cmd === 'migrate' ? 'migrations applied' : await runAdmin(store, argv)) + '\n');
      return 0;
    } finally {
      await store.close();
    }
  }

  log.info({ config: redactedConfig(config) }, 'starting');
  // The store first: the first user and the local cluster exist before leader work starts,
  // so the autoscaler's first tick already brings up the local runners.
  const waitMs = config.dbStartWaitSeconds === 0 ? Number.MAX_SAFE_INTEGER : config.dbStartWaitSeconds * 1000;
  const store = await openStore(config, log.child({ component: 'store' }), systemClock, newId, waitMs);
  store.clusters.useSecrets(
    loadSecretBox({ keys: config.secretKeys, dataDir: config.dataDir, shared: Boolean(config.databaseUrl), warn: (m, f) => log.warn(f, m) }),
  );
  const boot = await ensureBootstrap(store, config.dataDir, log);
  let local: Awaited<ReturnType<typeof ensureLocalCluster>> | undefined;
  const slots = config.localRunnerSlots;
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
  const cp = await startControlPlane(config, log, {
    store,
    ...(local ? { localToken: (id: string) => (id === local!.clusterId ? local!.token : undefined) } : {}),
  });
  const lines = [
    '',
    `Gantry is running (${cp.store.db.engine}${config.databaseUrl ? '' : `, data in ${config.dataDir}`}).`,
    `  API base URL: ${cp.url}/2/`,
    `  runner gRPC:  127.0.0.1:${cp.grpcPort}` +
      (local ? ` (the default cluster scales local runner processes: at least ${config.localRunners}, ${slots} slots each)` : ''),
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
  process.stdout.write(lines.join('\n'));

  return new Promise<number>((resolve) => {
    let signals = 0;
    const onSignal = (sig: string) => {
      signals++;
      if (signals > 1) {
        log.warn({ signal: sig }, 'second signal: exiting now');
        resolve(1);
        return;
      }
      log.info({ signal: sig }, 'stopping');
      // Local runners drain while the gateway still takes their results; then the rest.
      cp.providers
        .close({ stopLocal: true })
        .then(() => cp.stop())
        .then(() => store.close())
        .then(
        () => resolve(0),
        (err) => {
          log.error({ err }, 'stop failed');
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => onSignal('SIGTERM'));
    process.on('SIGINT', () => onSignal('SIGINT'));
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UsageError || err instanceof ConfigError || err instanceof DataDirInUseError) {
      process.stderr.write(`gantry: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof StoreUnavailableError) {
      process.stderr.write(`gantry: ${err.message}\nIs PostgreSQL running and DATABASE_URL right?\n`);
      process.exit(3);
    }
    process.stderr.write(`gantry: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
