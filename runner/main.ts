import { ConfigError } from '../lib/errors.ts';
import { createLogger, logFormat } from '../lib/logger.ts';
import { loadRunnerConfig } from './config.ts';
import { startRunner } from './start.ts';

/**
 * `gantry runner`: the only place that touches process. SIGTERM or SIGINT drains (no new
 * work; running tasks finish up to GANTRY_RUNNER_DRAIN_TIMEOUT_S), then Goodbye and exit 0;
 * a second signal hands the running tasks back to the control plane and exits. A Drain from
 * the control plane (an operator's `gantry runner drain`) does the same as SIGTERM.
 */
async function main(): Promise<number> {
  const config = loadRunnerConfig(process.env);
  const log = createLogger({ name: 'gantry-runner', level: config.logLevel, format: logFormat(config.logFormat) });
  const runner = await startRunner(config, log);
  return new Promise<number>((resolve) => {
    // Drained at the control plane's request (gantry runner drain): done, exit 0.
    void runner.stopped.then(() => resolve(runner.state === 'failed' ? 1 : 0));
    let signals = 0;
    const onSignal = (sig: string) => {
      signals++;
      if (signals === 1) {
        log.info({ signal: sig }, 'draining: running tasks finish, no new work');
        runner.drain('finish').then(() => resolve(0), () => resolve(1));
      } else {
        log.warn({ signal: sig }, 'second signal: handing running tasks back');
        runner.drain('hand_back').then(() => resolve(0), () => resolve(1));
      }
    };
    process.on('SIGTERM', () => onSignal('SIGTERM'));
    process.on('SIGINT', () => onSignal('SIGINT'));
  });
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`gantry runner: ${err.message}\n`);
      process.exit(2);
    }
    process.stderr.write(`gantry runner: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
