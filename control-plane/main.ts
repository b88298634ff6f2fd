import { systemClock } from '../lib/clock.ts';
import { ConfigError } from '../lib/errors.ts';
import { newId } from '../lib/ids.ts';
import { createLogger } from '../lib/logger.ts';
import { runAdmin, UsageError, USAGE } from './admin.ts';
import { loadConfig, redactedConfig } from './config.ts';
import { startEmbedded } from './embedded.ts';
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
  const gantry = await startEmbedded(config, log);
  process.stdout.write(gantry.banner());

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
      gantry.stop().then(
        () => resolve(0),
        (err: unknown) => {
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
