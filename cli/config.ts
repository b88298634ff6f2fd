/**
 * Where the command line finds its server and credentials, as the IronWorker tools do: each
 * setting is taken, per key, from the first of these that has it:
 *
 * 1. the flags (`--token`, `--project-id`, `--host`, `--port`, `--protocol`);
 * 2. `iron.json` in the current directory (its `iron_worker` object before its top level);
 * 3. the environment, `IRON_WORKER_*` before `IRON_*` (`TOKEN`, `PROJECT_ID`, `HOST`, `PORT`,
 *    `PROTOCOL` or `SCHEME`);
 * 4. `~/.iron.json` (again `iron_worker` before the top level);
 * 5. the defaults: `http://127.0.0.1:8080` (a local `gantry start`); https without a port is 443.
 *
 * This is the order of iron.io's configuration scheme (global file, then global and product
 * environment variables, then the local file, then the client's own arguments, each
 * overriding the one before). The only module of the command line that reads the
 * environment or the configuration files.
 */
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { CliUsageError } from './errors.ts';

/** The settings, by their names in iron.json. */
export const KEYS = ['token', 'project_id', 'host', 'port', 'protocol'] as const;
export type Key = (typeof KEYS)[number];

export type Protocol = 'http' | 'https';

/** The settings a command runs with, and where each came from (shown by `gantry login`). */
export interface ClientConfig {
  readonly token: string | undefined;
  readonly projectId: string | undefined;
  readonly host: string;
  readonly port: number;
  readonly protocol: Protocol;
  /** e.g. `--token`, `./iron.json`, `IRON_TOKEN`, `~/.iron.json`, `default`. */
  readonly sources: Readonly<Record<Key, string>>;
}

/** The flags that override every other source. */
export interface ConfigFlags {
  token?: string;
  projectId?: string;
  host?: string;
  port?: string;
  protocol?: string;
}

/** What the configuration is read from: the process's environment and places. */
export interface ConfigPlaces {
  env: Record<string, string | undefined>;
  cwd: string;
  home: string;
}

type Raw = Partial<Record<Key, string>>;


/** The local file (`./iron.json`) or the global one (`~/.iron.json`). */
export function ironJsonPath(places: ConfigPlaces, global: boolean): string {
  return global ? path.join(places.home, '.iron.json') : path.join(places.cwd, 'iron.json');
}

/** A file's settings: its `iron_worker` object's before its top level's; {} when it does not exist. */
function fromFile(file: string): Raw {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CliUsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (err) {
    throw new CliUsageError(`${file} is not valid JSON: ${(err as Error).message}`, { hint: 'fix it, or write it again with: gantry login' });
  }
  if (!isObject(data)) throw new CliUsageError(`${file} must hold a JSON object`);
  const product = isObject(data.iron_worker) ? data.iron_worker : {};
  const out: Raw = {};
  for (const obj of [product, data]) {
    for (const key of KEYS) {
      const v = key === 'protocol' ? (obj.protocol ?? obj.scheme) : obj[key];
      if (out[key] === undefined && (typeof v === 'string' || typeof v === 'number') && String(v) !== '') out[key] = String(v);
    }
  }
  return out;
}

function fromEnv(env: Record<string, string | undefined>, prefix: string): Raw {
  const out: Raw = {};
  for (const key of KEYS) {
    const names = key === 'protocol' ? [`${prefix}PROTOCOL`, `${prefix}SCHEME`] : [`${prefix}${key.toUpperCase()}`];
    const v = names.map((n) => env[n]).find((x) => x !== undefined && x !== '');
    if (v !== undefined) out[key] = v;
  }
  return out;
}

/** Reads every source and merges them per key (see the module's comment). */
export function loadClientConfig(flags: ConfigFlags, places: ConfigPlaces): ClientConfig {
  const flagRaw: Raw = { token: flags.token, project_id: flags.projectId, host: flags.host, port: flags.port, protocol: flags.protocol };
  const sources: [string, Raw][] = [
    ['--', flagRaw],
    ['./iron.json', fromFile(ironJsonPath(places, false))],
    ['IRON_WORKER_', fromEnv(places.env, 'IRON_WORKER_')],
    ['IRON_', fromEnv(places.env, 'IRON_')],
    ['~/.iron.json', fromFile(ironJsonPath(places, true))],
  ];
  const values: Raw = {};
  const from: Partial<Record<Key, string>> = {};
  for (const key of KEYS) {
    for (const [name, raw] of sources) {
      const v = raw[key];
      if (v === undefined || v === '') continue;
      values[key] = v;
      from[key] = name === '--' ? `--${key.replace('_', '-')}` : name.endsWith('_') ? `${name}${key.toUpperCase()}` : name;
      break;
    }
  }
  return checkSettings(values, from);
}

/** Settings checked and completed with the defaults; `from` names each value's source in errors. */
export function checkSettings(values: Partial<Record<Key, string>>, from: Partial<Record<Key, string>> = {}): ClientConfig {
  const protocol = (values.protocol ?? 'http').toLowerCase();
  if (protocol !== 'http' && protocol !== 'https') {
    throw new CliUsageError(`protocol must be http or https, got ${JSON.stringify(values.protocol)} (from ${from.protocol ?? 'gantry login'})`);
  }
  let port = protocol === 'https' ? 443 : 8080;
  if (values.port !== undefined) {
    port = Number(values.port);
    if (!/^\d{1,5}$/.test(values.port) || port < 1 || port > 65535) {
      throw new CliUsageError(`port must be a number from 1 to 65535, got ${JSON.stringify(values.port)} (from ${from.port ?? 'gantry login'})`);
    }
  }
  return Object.freeze({
    token: values.token,
    projectId: values.project_id,
    host: values.host ?? '127.0.0.1',
    port,
    protocol,
    sources: Object.freeze(Object.fromEntries(KEYS.map((k) => [k, from[k] ?? 'default'])) as Record<Key, string>),
  });
}

/** The API's base URL, `.../2`. */
export function apiBase(c: Pick<ClientConfig, 'protocol' | 'host' | 'port'>): string {
  const host = c.host.includes(':') && !c.host.startsWith('[') ? `[${c.host}]` : c.host;
  return `${c.protocol}://${host}:${c.port}/2`;
}

/**
 * Writes the settings into `file` (mode 0600: it holds a token), keeping any other keys the
 * file already had (another product's settings, say).
 */
export function writeIronJson(file: string, settings: { token: string; project_id: string; host: string; port: number; protocol: Protocol }): void {
  let existing: Record<string, unknown> = {};
  try {
    const parsed: unknown = JSON.parse(fs.readFileSync(file, 'utf8'));
    if (isObject(parsed)) existing = parsed;
  } catch {
    // No file, or not JSON: it is replaced.
  }
  const text = `${JSON.stringify({ ...existing, ...settings }, null, 2)}\n`;
  const tmp = `${file}.${randomBytes(6).toString('hex')}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  fs.chmodSync(tmp, 0o600);
  fs.renameSync(tmp, file);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
