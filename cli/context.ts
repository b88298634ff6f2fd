/**
 * What a command runs with: its output streams (and whether they are terminals), the
 * configuration places, the global flags, and the API client they make. Built once per
 * command by program.ts; commands never touch `process`.
 */
import { ApiClient } from './api.ts';
import { loadClientConfig, type ClientConfig, type ConfigFlags, type ConfigPlaces } from './config.ts';
import { CliUsageError } from './errors.ts';

/** The process's streams, as the command line sees them. */
export interface Io {
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  stdinIsTTY: boolean;
  /** Asks a question on the terminal and resolves with the answer (login's prompts); a secret is not echoed. */
  ask(question: string, o?: { secret?: boolean }): Promise<string>;
}

/** Options every command takes (commander's global options). */
export interface GlobalOptions extends ConfigFlags {
  json?: boolean;
}

export class Context {
  readonly json: boolean;
  private cached: ClientConfig | undefined;

  constructor(
    readonly io: Io,
    readonly places: ConfigPlaces,
    readonly flags: GlobalOptions,
    readonly userAgent: string,
  ) {
    this.json = Boolean(flags.json);
  }

  /** The merged configuration (config.ts). */
  config(): ClientConfig {
    this.cached ??= loadClientConfig(this.flags, this.places);
    return this.cached;
  }

  /** A client of the API: the token must be known, and the project id unless `project` is false. */
  api(o: { project?: boolean } = {}): ApiClient {
    const c = this.config();
    if (!c.token) throw new CliUsageError('no token configured', { hint: 'run gantry login, or set IRON_TOKEN, or pass --token' });
    if (o.project !== false && !c.projectId) throw new CliUsageError('no project id configured', { hint: 'run gantry login, or set IRON_PROJECT_ID, or pass --project-id' });
    return new ApiClient(c, this.userAgent);
  }

  /** A line of the command's result on stdout. */
  print(line: string): void {
    this.io.stdout.write(`${line}\n`);
  }

  /** The API's JSON reply, exactly as received, on stdout. */
  printJson(text: string): void {
    this.io.stdout.write(text.endsWith('\n') ? text : `${text}\n`);
  }

  /** Progress on stderr, only when stderr is a terminal (scripts see only results and errors). */
  progress(line: string): void {
    if (this.io.stderr.isTTY) this.io.stderr.write(`${line}\n`);
  }
}

/** Rows as columns two spaces apart, each as wide as its widest cell. */
export function table(rows: (string | number | null | undefined)[][]): string {
  const cells = rows.map((r) => r.map((c) => (c === null || c === undefined || c === '' ? '-' : String(c))));
  const widths: number[] = [];
  for (const r of cells) r.forEach((c, i) => (widths[i] = Math.max(widths[i] ?? 0, c.length)));
  return cells.map((r) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]!))).join('  ')).join('\n');
}
