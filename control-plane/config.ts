import path from 'node:path';
import { EnvReader } from '../lib/env.ts';
import { ConfigError } from '../lib/errors.ts';

/** The control plane's configuration: read once from the environment, then frozen. */
export interface ControlPlaneConfig {
  /** postgres://… when set; absent means PGlite in-process with its data under dataDir. */
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  /** The URL printed for people and clients; derived from host and port unless set. */
  readonly publicUrl: string | undefined;
  readonly logLevel: string;
  /** Largest JSON request body, in bytes (413 above it). */
  readonly maxJsonBody: number;
  /** Largest code-package upload (multipart), in bytes. */
  readonly maxUploadBytes: number;
  /** Task timeout ceiling for ordinary clusters (IronWorker: 3600 s). */
  readonly maxTimeout: number;
  /** Higher timeout ceilings for named long-running clusters. */
  readonly clusterMaxTimeouts: Readonly<Record<string, number>>;
  /** How often the schedule loop looks for due schedules. */
  readonly schedulerTickMs: number;
  /** pg pool: connections, and how long a connect or query may take before 503. */
  readonly pgPoolMax: number;
  readonly pgConnectTimeoutMs: number;
  readonly pgQueryTimeoutMs: number;
  /** Seconds a client is told to wait (Retry-After) when the database is unavailable. */
  readonly retryAfterSeconds: number;
  /** How long `start` waits for an unreachable PostgreSQL before giving up (0: forever). */
  readonly dbStartWaitSeconds: number;
}

/** Parses `GANTRY_CLUSTER_MAX_TIMEOUTS="long-running=86400,etl=43200"`. */
function parseClusterTimeouts(raw: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  if (!raw) return out;
  for (const part of raw.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^([A-Za-z0-9_.-]{1,64})=(\d{1,7})$/.exec(part);
    if (!m) {
      throw new ConfigError(
        `GANTRY_CLUSTER_MAX_TIMEOUTS entries must look like name=seconds (comma separated), got ${JSON.stringify(part)}`,
      );
    }
    out[m[1]!] = Number(m[2]);
  }
  return out;
}

export function loadConfig(env: Record<string, string | undefined> = process.env): ControlPlaneConfig {
  const e = new EnvReader(env);
  const databaseUrl = e.str('DATABASE_URL');
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new ConfigError('DATABASE_URL must be a postgres:// or postgresql:// URL');
  }
  return Object.freeze({
    databaseUrl,
    dataDir: path.resolve(e.str('GANTRY_DATA_DIR', './data')),
    host: e.str('GANTRY_HOST', '127.0.0.1'),
    port: e.int('GANTRY_PORT', 8080, { min: 0, max: 65535 }),
    publicUrl: e.str('GANTRY_PUBLIC_URL'),
    logLevel: e.oneOf('LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    maxJsonBody: e.int('GANTRY_MAX_JSON_BODY', 5 * 1024 * 1024, { min: 65536 }),
    maxUploadBytes: e.int('GANTRY_MAX_UPLOAD_BYTES', 256 * 1024 * 1024, { min: 65536 }),
    maxTimeout: e.int('GANTRY_MAX_TIMEOUT', 3600, { min: 1 }),
    clusterMaxTimeouts: Object.freeze(parseClusterTimeouts(e.str('GANTRY_CLUSTER_MAX_TIMEOUTS'))),
    schedulerTickMs: e.int('GANTRY_SCHEDULER_TICK_MS', 1000, { min: 10, max: 60000 }),
    pgPoolMax: e.int('GANTRY_PG_POOL_MAX', 10, { min: 1, max: 1000 }),
    pgConnectTimeoutMs: e.int('GANTRY_PG_CONNECT_TIMEOUT_MS', 3000, { min: 100 }),
    pgQueryTimeoutMs: e.int('GANTRY_PG_QUERY_TIMEOUT_MS', 15000, { min: 100 }),
    retryAfterSeconds: e.int('GANTRY_RETRY_AFTER_SECONDS', 2, { min: 1, max: 3600 }),
    dbStartWaitSeconds: e.int('GANTRY_DB_START_WAIT_SECONDS', 0, { min: 0 }),
  });
}

/** The config as it may be logged: the database URL without its password. */
export function redactedConfig(c: ControlPlaneConfig): Record<string, unknown> {
  let db = 'pglite';
  if (c.databaseUrl) {
    try {
      const u = new URL(c.databaseUrl);
      if (u.password) u.password = '***';
      db = u.toString();
    } catch {
      db = '[unparseable]';
    }
  }
  return { ...c, databaseUrl: undefined, database: db };
}
