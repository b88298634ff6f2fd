import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

/** Keys whose values never reach a log line. */
export const REDACT_PATHS = [
  'token',
  '*.token',
  'password',
  '*.password',
  'authorization',
  '*.authorization',
  'req.headers.authorization',
  'databaseUrl',
  '*.databaseUrl',
  'secretKeys',
  '*.secretKeys',
  'secret_access_key',
  '*.secret_access_key',
  'access_key_id',
  '*.access_key_id',
  'docker_auth',
  '*.docker_auth',
  'dockerAuth',
  '*.dockerAuth',
];

/** How log lines are written: JSON, one object a line, or `pretty` for a person at a terminal. */
export type LogFormat = 'json' | 'pretty';

/** `auto`: pretty when standard output is a terminal, JSON otherwise (a file, a pipe, a collector). */
export function logFormat(setting: 'auto' | LogFormat, out: { isTTY?: boolean } = process.stdout): LogFormat {
  return setting === 'auto' ? (out.isTTY ? 'pretty' : 'json') : setting;
}

/**
 * The root logger of a process; made once in main.ts and passed down as children. Lines go
 * to standard output (what the program says to a person, its banner and its errors, goes to
 * standard error), redacted alike in both formats.
 */
export function createLogger(opts: { level: string; name: string; destination?: NodeJS.WritableStream; format?: LogFormat }): Logger {
  const destination = opts.destination ?? process.stdout;
  return pino(
    {
      name: opts.name,
      level: opts.level,
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    opts.format === 'pretty' ? pretty({ destination, sync: true, colorize: (destination as { isTTY?: boolean }).isTTY === true }) : destination,
  );
}

/** A logger that writes nothing, for tests that do not inspect logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
