import { systemClock } from '../lib/clock.ts';
import { ConfigError } from '../lib/errors.ts';
import { newId } from '../lib/ids.ts';
import { createLogger, logFormat } from '../lib/logger.ts';
import { runAdmin, UsageError, USAGE } from './admin.ts';
import { loadConfig, redactedConfig } from './config.ts';
import { startEmbedded } from './embedded.ts';
import { DatabaseMissingError, openStore } from './store/index.ts';
import { loadSecretBox } from '../lib/secretbox.ts';
import { DataDirInUseError } from './store/db.ts';
import { adminSocketPath, runThroughSocket } from './admin-socket.ts';
import fs from 'node:fs';
import { StoreUnavailableError } from './errors.ts';

/** The `gantry` command: the only place that touches process (signals, exit codes). */
async function main(argv: string[]): Promise<number> {
  const cmd = argv[0] ?? 'start';
  if (cmd === 'help' || cmd === '--help' || cmd === '-h') {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const config = loadConfig(process.env);
  // The server logs to stdout; an admin command's output is its stdout, so its warnings go to stderr.
  const log =
    cmd === 'start'
      ? createLogger({ name: 'gantry', level: config.logLevel, format: logFormat(config.logFormat) })
      : createLogger({ name: 'gantry', level: 'warn', destination: process.stderr, format: logFormat(config.logFormat, process.stderr) });

  if (cmd !== 'start') {
    let store;
    try {
      store = await openStore(config, log, systemClock, newId);
    } catch (err) {
      // The embedded data directory is a running server's: the command goes through it.
      const socket = adminSocketPath(config.dataDir);
      if (!(err instanceof DataDirInUseError) || cmd === 'migrate' || !fs.existsSync(socket)) throw err;
      process.stdout.write(`${await runThroughSocket(socket, argv, (line) => process.stderr.write(`${line}\n`))}\n`);
      return 0;
    }
    store.useSecrets(loadSecretBox({ keys: config.secretKeys, dataDir: config.dataDir, shared: Boolean(config.databaseUrl) }));
    store.quotas.useDefaults(config.quotas, config.quotaRetryAfterS);
    try {
      const progress = (line: string) => process.stderr.write(`${line}\n`);
      process.stdout.write((cmd === 'migrate' ? 'migrations applied' : await runAdmin(store, argv, { progress })) + '\n');
      return 0;
    } finally {
      await store.close();
    }
  }

  log.info({ config: redactedConfig(config) }, 'starting');
  const gantry = await startEmbedded(config, log);
  process.stderr.write(await gantry.banner());

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
    if (err instanceof UsageError || err instanceof ConfigError || err instanceof DataDirInUseError || err instanceof DatabaseMissingError) {
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
