import fs from 'node:fs';
import tls from 'node:tls';
import os from 'node:os';
import path from 'node:path';
import { EnvReader } from '../lib/env.ts';
import { ConfigError } from '../lib/errors.ts';
import { DEFAULT_ZIP_LIMITS, type ZipLimits } from '../lib/zip.ts';
import { parseEgressAllow, type EgressPolicy } from '../lib/egress.ts';
import { smtpConfigFromEnv, type SmtpConfig } from './outbox/mailer.ts';

/** The control plane's configuration: read once from the environment, then frozen. */
export interface ControlPlaneConfig {
  /** postgres://… when set; absent means PGlite in-process with its data under dataDir. */
  readonly databaseUrl: string | undefined;
  readonly dataDir: string;
  readonly host: string;
  readonly port: number;
  /** The URL printed for people and clients; derived from host and port unless set. */
  readonly publicUrl: string | undefined;
  /** HTTPS for the REST API: both PEM files (GANTRY_TLS_CERT, GANTRY_TLS_KEY), reloaded when they change. */
  readonly tls: { certFile: string; keyFile: string } | undefined;
  readonly logLevel: string;
  /** GANTRY_LOG_FORMAT: json, pretty, or auto (pretty on a terminal, JSON otherwise). */
  readonly logFormat: 'auto' | 'json' | 'pretty';
  /** Largest JSON request body, in bytes (413 above it). */
  readonly maxJsonBody: number;
  /** Largest code-package upload (multipart), in bytes. */
  readonly maxUploadBytes: number;
  /** Bounds of a code package's zip, checked at upload from its central directory (lib/zip.ts). */
  readonly zipLimits: Readonly<ZipLimits>;
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
  /** How long /healthcheck waits for each dependency before calling it down (GANTRY_HEALTHCHECK_TIMEOUT_MS). */
  readonly healthcheckTimeoutMs: number;
  readonly dbStartWaitSeconds: number;
  /** The runner gateway (gRPC): address, and TLS when both files are given. */
  readonly grpcHost: string;
  readonly grpcPort: number;
  readonly grpcTlsCert: string | undefined;
  readonly grpcTlsKey: string | undefined;
  /** This replica's name in runner sessions. */
  readonly serverId: string;
  /** Runner protocol timers (proto/README.md, 5 Timers), sent to runners in Settings. */
  readonly timers: Readonly<RunnerTimers>;
  /** Followers of live logs (`?follow=1`, Server-Sent Events, WebSockets): live/log-feed.ts. */
  readonly liveLogs: Readonly<LiveLogSettings>;
  /** Internal retries after runner loss or runner errors before a task ends. */
  readonly runnerLossBudget: number;
  /**
   * A runner at fault (it failed to run a task through its own fault, or rejected an offer)
   * is offered nothing for this long, doubling with each fault up to runnerPenaltyMaxMs,
   * reset by a task it starts. Kept in the runners row: a reconnect does not clear it.
   */
  readonly runnerPenaltyBaseMs: number;
  readonly runnerPenaltyMaxMs: number;
  /** A queued task gains one priority level per this many seconds waited. */
  readonly priorityAgeingS: number;
  /** Per-task log cap in bytes; beyond it the runner truncates with a visible note. */
  readonly logMaxBytes: number;
  /** How often the lease sweeper runs. */
  readonly sweepIntervalMs: number;
  /**
   * The dispatcher's safety-net tick (delayed tasks becoming eligible, missed wake-ups);
   * new work and freed slots wake it at once without waiting for this.
   */
  readonly dispatchTickMs: number;
  /**
   * Frames written to a runner's control stream and not yet flushed (the runner stopped
   * reading) before its session is dropped: bounds the memory one runner can hold.
   */
  readonly maxUnflushedFrames: number;
  /** Runners `start` launches on this host (default 1 embedded, 0 with DATABASE_URL). */
  readonly localRunners: number;
  /** etcd client URLs (ETCD_ENDPOINTS); empty means the in-process local coordinator. */
  readonly etcdEndpoints: readonly string[];
  /** Prefix of every etcd key, so several installations can share one etcd. */
  readonly etcdPrefix: string;
  /**
   * TTL in seconds of this replica's etcd lease: leadership, concurrency slots and event
   * keys die with it when the replica does.
   */
  readonly coordTtlS: number;
  /**
   * How long this replica may fail to reach PostgreSQL before it stands down from the
   * election (coord/db-watch.ts), so a replica that reaches it leads. Default: 2 TTLs.
   */
  readonly leaderDbGraceMs: number;
  /** How often the leader reconciles concurrency slots against PostgreSQL's live leases. */
  readonly slotReconcileMs: number;
  /** Smallest `run_every` a schedule may have (IronWorker: 60 s; tests shorten it). */
  readonly minRunEveryS: number;
  /**
   * Keys that seal cluster secrets (AES-256-GCM), `keyid:base64,...`, the first sealing;
   * unset: a key file in the data directory (see README, "Secrets").
   */
  readonly secretKeys: string | undefined;
  /** The autoscaler's tick, and overrides of its tunables (JSON, e.g. shorter windows in tests). */
  readonly autoscaleTickMs: number;
  readonly autoscaleTuning: Readonly<Record<string, number>>;
  /** The gRPC address launched runners dial (host:port); default: this host's gRPC port. */
  readonly runnerEndpoint: string | undefined;
  /** Runner image and tag launched instances run (cloud-config's {{.RunnerImage}}:{{.RunnersVersion}}). */
  readonly runnerImage: string;
  readonly runnersVersion: string;
  /** Slots of each local runner process, and the executor they use. */
  readonly localRunnerSlots: number;
  readonly localExecutor: 'docker' | 'noop';
  /** An EC2-compatible endpoint instead of AWS's (a private cloud, or tests' fake EC2). */
  readonly ec2Endpoint: string | undefined;
  /** Per-user quotas (GANTRY_QUOTA_*); an operator overrides them per user (`gantry user quota`). */
  readonly quotas: Readonly<QuotaLimits>;
  /** Seconds a client refused by the queued-tasks quota is told to wait (Retry-After with 429). */
  readonly quotaRetryAfterS: number;
  /** When set, `/metrics` answers only `Authorization: Bearer <token>` (401 otherwise). Never logged. */
  readonly metricsToken: string | undefined;
  /**
   * When a port is given, `/metrics` is served on its own HTTP server at metricsHost:metricsPort
   * (0: any free port) and not on the API's port.
   */
  readonly metricsHost: string;
  readonly metricsPort: number | undefined;
  /** What the leader deletes, after how long, and at what pace (README, "Retention"). */
  readonly retention: Readonly<RetentionSettings>;
  /** How often the leader records the queue's load (README, "Queue load"); 0: not recorded. */
  readonly queueLoadIntervalS: number;
  /** Runners' machine stats are recorded at most once per runner per this many seconds (README, "Fleet stats"). */
  readonly statsIntervalS: number;
  /** Users (by email, lower case) who see operator clusters' workers through the workers API. */
  readonly operators: readonly string[];
  /** Outcome webhooks and e-mails: where they may go, how they are sent and retried (README, "Outcome webhooks"). */
  readonly deliveries: Readonly<DeliverySettings>;
}

/** How outcome webhooks and e-mails are sent (control-plane/outbox/). */
export interface DeliverySettings {
  /** Receivers allowed although their address is loopback, private, link-local or metadata (GANTRY_WEBHOOK_ALLOW). */
  egress: EgressPolicy;
  /** One attempt's limit: connect, send, the answer's headers and the little of its body read. */
  timeoutMs: number;
  /** Retries go on this long after the outcome (or a redelivery), then the delivery is given up. */
  retryForS: number;
  /** Back-off: the first retry after about this, doubling to at most retryMaxMs, each with jitter. */
  retryBaseMs: number;
  retryMaxMs: number;
  /** Sends in flight at most, per replica, and per project over all replicas. */
  inFlight: number;
  perProjectInFlight: number;
  /** The loop looks for due deliveries at least this often (a NOTIFY wakes it at once on PostgreSQL). */
  pollMs: number;
  /** After a rotation, the previous signing secret still signs for this long. */
  secretOverlapS: number;
  /** The SMTP server `notify` e-mails go through; none: `notify` is refused. */
  smtp: SmtpConfig | undefined;
}

/** Retention periods (0: keep for ever) and the pace of the leader's retention passes. */
export interface RetentionSettings {
  /** Finished tasks, with their logs and leases, this many days after they ended. */
  tasksDays: number;
  /** Complete and cancelled schedules this many days after they finished (default: tasksDays). */
  schedulesDays: number;
  /** Rows one batch deletes at most (and so every statement), each batch its own transaction. */
  batch: number;
  /** Pause between batches, so a pass never holds locks long or crowds out the hot path. */
  pauseMs: number;
  /** How often a pass runs. */
  intervalS: number;
  /** The recorded queue load's per-interval rows (queue_load, cluster_load and their ticks), days after their instant. */
  queueLoadDays: number;
  /** Its hourly roll-up, days after the hour. */
  queueLoadHourlyDays: number;
  /** Recorded machine stats: raw samples, 1-minute and 1-hour roll-ups, kept this many days. */
  statsRawDays: number;
  statsMinuteDays: number;
  statsHourDays: number;
}

/** Per-user limits, counted across all of the user's projects. */
export interface QuotaLimits {
  /** Live clusters the user owns. */
  clusters: number;
  /** Live code packages (a new revision of a package is not a new package). */
  codes: number;
  /** Schedules still scheduled (complete and cancelled ones do not count). */
  schedules: number;
  /** Tasks with status queued, delayed ones included. */
  queuedTasks: number;
}

/**
 * Quota defaults, and why. Each is well above what one team's normal use needs and bounds
 * what one user can make the installation carry:
 * - clusters 20: a cluster per memory size, region or team fits easily; every autoscaled one
 *   costs EC2 calls and a pass of the leader loop each tick (one user has been seen with 350);
 * - code packages 500: one per kind of worker; each adds to dispatch's round-robin and holds
 *   its revisions' zips (up to GANTRY_MAX_UPLOAD_BYTES each);
 * - schedules 1,000 active: at run_every ≥ 60 s that is at most about 17 firings a second;
 * - queued tasks 100,000: a hundred full POSTs of 1,000; about 22 s of work at the measured
 *   4,500 no-op tasks/s of one control plane and hours for real tasks on a modest fleet,
 *   while bounding the rows and queue-index entries one user can pile up.
 */
export const DEFAULT_QUOTAS: Readonly<QuotaLimits> = Object.freeze({
  clusters: 20,
  codes: 500,
  schedules: 1000,
  queuedTasks: 100_000,
});

/** How live logs are followed (docs/architecture.md, "Live logs"). */
export interface LiveLogSettings {
  /** Every tail is read again this often, whatever was notified (a notification missed). */
  pollMs: number;
  /** A final task whose log is not whole yet ends its followers after this long without output. */
  graceMs: number;
  /** A follow ends after this long (the client resumes from its offset): proxies cut long requests anyway. */
  maxMs: number;
  /** Recent output each followed log keeps in memory for its followers; one further behind reads the store. */
  bufferBytes: number;
}

export interface RunnerTimers {
  beatIntervalMs: number;
  sessionDeadAfterMs: number;
  leaseTtlMs: number;
  acceptDeadlineMs: number;
  handshakeTimeoutMs: number;
  logFlushIntervalMs: number;
  cancelGraceMs: number;
  reconnectBaseMs: number;
  reconnectCapMs: number;
}

/** The largest quota value (the columns are PostgreSQL integers). */
export const QUOTA_MAX = 2 ** 31 - 1;
/**
 * Retry-After of a queueing refused by the queued-tasks quota: the queue frees as tasks
 * run, and the store recounts a refused user's tasks at most once a second anyway.
 */
export const DEFAULT_QUOTA_RETRY_AFTER_S = 5;

/** Parses `GANTRY_CLUSTER_MAX_TIMEOUTS="long-running=86400,etl=43200"`. */
function parseClusterTimeouts(raw: string | undefined): Record<string, number> {
  // No prototype: a cluster named "toString" or "constructor" must find nothing here.
  const out: Record<string, number> = Object.create(null);
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

/** `ETCD_ENDPOINTS="http://10.0.0.1:2379,http://10.0.0.2:2379"`. */
function parseEndpoints(raw: string | undefined): string[] {
  if (!raw) return [];
  const out = raw.split(',').map((s) => s.trim()).filter(Boolean);
  for (const u of out) {
    if (!/^https?:\/\/[^\s/]+(:\d+)?\/?$/.test(u)) {
      throw new ConfigError(`ETCD_ENDPOINTS entries must be http(s)://host:port URLs (comma separated), got ${JSON.stringify(u)}`);
    }
  }
  return out;
}

/** `GANTRY_AUTOSCALE_TUNING='{"idleBeforeKillMs": 60000}'`: numbers only, names checked by the autoscaler. */
function parseTuning(raw: string | undefined): Record<string, number> {
  if (!raw) return {};
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new ConfigError('GANTRY_AUTOSCALE_TUNING must be a JSON object of numbers, e.g. {"idleBeforeKillMs": 60000}');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ConfigError('GANTRY_AUTOSCALE_TUNING must be a JSON object');
  for (const [k, n] of Object.entries(v)) {
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw new ConfigError(`GANTRY_AUTOSCALE_TUNING.${k} must be a number ≥ 0`);
  }
  return v as Record<string, number>;
}

function parsePrefix(raw: string): string {
  if (!/^[A-Za-z0-9/_.-]{1,128}$/.test(raw)) {
    throw new ConfigError(`GANTRY_ETCD_PREFIX may hold letters, digits and / _ . - (at most 128), got ${JSON.stringify(raw)}`);
  }
  return raw.endsWith('/') ? raw : `${raw}/`;
}

/** GANTRY_METRICS_TOKEN: a bearer token, so something a header can carry and long enough not to be guessed. */
function parseMetricsToken(raw: string | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!/^[\x21-\x7e]+$/.test(raw)) throw new ConfigError('GANTRY_METRICS_TOKEN may hold only printable ASCII characters, without spaces');
  if (raw.length < 16) throw new ConfigError(`GANTRY_METRICS_TOKEN must be at least 16 characters, got ${raw.length}`);
  if (raw.length > 1024) throw new ConfigError(`GANTRY_METRICS_TOKEN must be at most 1024 characters, got ${raw.length}`);
  return raw;
}

/** GANTRY_METRICS_HOST / GANTRY_METRICS_PORT: a separate listener for /metrics, or none. */
function parseMetricsListen(e: EnvReader, apiPort: number): { metricsHost: string; metricsPort: number | undefined } {
  const host = e.str('GANTRY_METRICS_HOST');
  if (e.str('GANTRY_METRICS_PORT') === undefined) {
    if (host !== undefined) {
      throw new ConfigError('GANTRY_METRICS_HOST needs GANTRY_METRICS_PORT (without a port, /metrics is served on the API port)');
    }
    return { metricsHost: '127.0.0.1', metricsPort: undefined };
  }
  const port = e.int('GANTRY_METRICS_PORT', 0, { min: 0, max: 65535 });
  if (port !== 0 && port === apiPort) throw new ConfigError(`GANTRY_METRICS_PORT must differ from GANTRY_PORT (both ${port})`);
  return { metricsHost: host ?? '127.0.0.1', metricsPort: port };
}

/** GANTRY_RETENTION_*: days of 0 keep a kind for ever; schedules follow tasks unless set. */
function parseRetention(e: EnvReader): RetentionSettings {
  const tasksDays = e.int('GANTRY_RETENTION_TASKS_DAYS', 30, { min: 0, max: 36500 });
  return Object.freeze({
    tasksDays,
    schedulesDays: e.int('GANTRY_RETENTION_SCHEDULES_DAYS', tasksDays, { min: 0, max: 36500 }),
    batch: e.int('GANTRY_RETENTION_BATCH', 1000, { min: 1, max: 100_000 }),
    pauseMs: e.int('GANTRY_RETENTION_PAUSE_MS', 100, { min: 0, max: 60_000 }),
    intervalS: e.int('GANTRY_RETENTION_INTERVAL_S', 3600, { min: 1, max: 604_800 }),
    queueLoadDays: e.int('GANTRY_RETENTION_QUEUE_LOAD_DAYS', 30, { min: 0, max: 36500 }),
    queueLoadHourlyDays: e.int('GANTRY_RETENTION_QUEUE_LOAD_HOURLY_DAYS', 365, { min: 0, max: 36500 }),
    statsRawDays: e.int('GANTRY_RETENTION_STATS_RAW_DAYS', 2, { min: 0, max: 36500 }),
    statsMinuteDays: e.int('GANTRY_RETENTION_STATS_1M_DAYS', 30, { min: 0, max: 36500 }),
    statsHourDays: e.int('GANTRY_RETENTION_STATS_1H_DAYS', 365, { min: 0, max: 36500 }),
  });
}

/** Both TLS files or neither, each readable and the pair loadable, named by its variable. */
function apiTls(certFile: string | undefined, keyFile: string | undefined): ControlPlaneConfig['tls'] {
  if (!certFile && !keyFile) return undefined;
  if (!certFile || !keyFile) {
    throw new ConfigError(`GANTRY_TLS_CERT and GANTRY_TLS_KEY go together: set both (PEM files) for HTTPS, or neither (${certFile ? 'GANTRY_TLS_KEY' : 'GANTRY_TLS_CERT'} is missing)`);
  }
  const pem: Record<string, Buffer> = {};
  for (const [name, file] of [['GANTRY_TLS_CERT', certFile], ['GANTRY_TLS_KEY', keyFile]] as const) {
    try {
      pem[name] = fs.readFileSync(file);
    } catch (err) {
      throw new ConfigError(`${name}: cannot read ${file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
  }
  try {
    tls.createSecureContext({ cert: pem.GANTRY_TLS_CERT, key: pem.GANTRY_TLS_KEY });
  } catch (err) {
    throw new ConfigError(`GANTRY_TLS_CERT and GANTRY_TLS_KEY do not load as a PEM certificate and its key: ${(err as Error).message}`);
  }
  return { certFile, keyFile };
}

export function loadConfig(env: Record<string, string | undefined> = process.env): ControlPlaneConfig {
  const e = new EnvReader(env);
  const databaseUrl = e.str('DATABASE_URL');
  if (databaseUrl !== undefined && !/^postgres(ql)?:\/\//.test(databaseUrl)) {
    throw new ConfigError('DATABASE_URL must be a postgres:// or postgresql:// URL');
  }
  const port = e.int('GANTRY_PORT', 8080, { min: 0, max: 65535 });
  return Object.freeze({
    databaseUrl,
    dataDir: path.resolve(e.str('GANTRY_DATA_DIR', './data')),
    host: e.str('GANTRY_HOST', '127.0.0.1'),
    port,
    publicUrl: e.str('GANTRY_PUBLIC_URL'),
    tls: apiTls(e.str('GANTRY_TLS_CERT'), e.str('GANTRY_TLS_KEY')),
    logLevel: e.oneOf('LOG_LEVEL', 'info', ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']),
    logFormat: e.oneOf('GANTRY_LOG_FORMAT', 'auto', ['auto', 'json', 'pretty'] as const),
    maxJsonBody: e.int('GANTRY_MAX_JSON_BODY', 5 * 1024 * 1024, { min: 65536 }),
    maxUploadBytes: e.int('GANTRY_MAX_UPLOAD_BYTES', 256 * 1024 * 1024, { min: 65536 }),
    zipLimits: Object.freeze({
      maxEntries: e.int('GANTRY_MAX_ZIP_ENTRIES', DEFAULT_ZIP_LIMITS.maxEntries, { min: 1 }),
      maxUnpackedBytes: e.int('GANTRY_MAX_ZIP_UNPACKED_BYTES', DEFAULT_ZIP_LIMITS.maxUnpackedBytes, { min: 65536 }),
    }),
    maxTimeout: e.int('GANTRY_MAX_TIMEOUT', 3600, { min: 1 }),
    clusterMaxTimeouts: Object.freeze(parseClusterTimeouts(e.str('GANTRY_CLUSTER_MAX_TIMEOUTS'))),
    schedulerTickMs: e.int('GANTRY_SCHEDULER_TICK_MS', 1000, { min: 10, max: 60000 }),
    pgPoolMax: e.int('GANTRY_PG_POOL_MAX', 10, { min: 1, max: 1000 }),
    pgConnectTimeoutMs: e.int('GANTRY_PG_CONNECT_TIMEOUT_MS', 3000, { min: 100 }),
    pgQueryTimeoutMs: e.int('GANTRY_PG_QUERY_TIMEOUT_MS', 15000, { min: 100 }),
    retryAfterSeconds: e.int('GANTRY_RETRY_AFTER_SECONDS', 2, { min: 1, max: 3600 }),
    dbStartWaitSeconds: e.int('GANTRY_DB_START_WAIT_SECONDS', 0, { min: 0 }),
    healthcheckTimeoutMs: e.int('GANTRY_HEALTHCHECK_TIMEOUT_MS', 2000, { min: 50, max: 60000 }),
    grpcHost: e.str('GANTRY_GRPC_HOST', '127.0.0.1'),
    grpcPort: e.int('GANTRY_GRPC_PORT', 9090, { min: 0, max: 65535 }),
    grpcTlsCert: e.str('GANTRY_GRPC_TLS_CERT'),
    grpcTlsKey: e.str('GANTRY_GRPC_TLS_KEY'),
    serverId: e.str('GANTRY_SERVER_ID', `${os.hostname()}-${process.pid}`),
    liveLogs: Object.freeze({
      pollMs: e.int('GANTRY_LOG_FOLLOW_POLL_MS', 2000, { min: 50, max: 60000 }),
      graceMs: e.int('GANTRY_LOG_FOLLOW_GRACE_MS', 3000, { min: 0, max: 600000 }),
      maxMs: e.int('GANTRY_LOG_FOLLOW_MAX_S', 3600, { min: 1, max: 86400 }) * 1000,
      bufferBytes: e.int('GANTRY_LOG_FOLLOW_BUFFER_KB', 1024, { min: 64, max: 65536 }) * 1024,
    }),
    timers: Object.freeze({
      beatIntervalMs: e.int('GANTRY_BEAT_INTERVAL_MS', 5000, { min: 50 }),
      sessionDeadAfterMs: e.int('GANTRY_SESSION_DEAD_AFTER_MS', 15000, { min: 100 }),
      leaseTtlMs: e.int('GANTRY_LEASE_TTL_MS', 60000, { min: 200 }),
      acceptDeadlineMs: e.int('GANTRY_ACCEPT_DEADLINE_MS', 10000, { min: 100 }),
      handshakeTimeoutMs: e.int('GANTRY_HANDSHAKE_TIMEOUT_MS', 10000, { min: 100 }),
      logFlushIntervalMs: e.int('GANTRY_LOG_FLUSH_INTERVAL_MS', 1000, { min: 10 }),
      cancelGraceMs: e.int('GANTRY_CANCEL_GRACE_MS', 10000, { min: 0 }),
      reconnectBaseMs: e.int('GANTRY_RECONNECT_BASE_MS', 500, { min: 10 }),
      reconnectCapMs: e.int('GANTRY_RECONNECT_CAP_MS', 30000, { min: 10 }),
    }),
    runnerLossBudget: e.int('GANTRY_RUNNER_LOSS_BUDGET', 3, { min: 0, max: 100 }),
    runnerPenaltyBaseMs: e.int('GANTRY_RUNNER_PENALTY_BASE_MS', 5000, { min: 0, max: 86_400_000 }),
    runnerPenaltyMaxMs: e.int('GANTRY_RUNNER_PENALTY_MAX_MS', 600_000, { min: 0, max: 86_400_000 }),
    priorityAgeingS: e.int('GANTRY_PRIORITY_AGEING_S', 600, { min: 1 }),
    logMaxBytes: e.int('GANTRY_LOG_MAX_BYTES', 8 * 1024 * 1024, { min: 1024 }),
    sweepIntervalMs: e.int('GANTRY_SWEEP_INTERVAL_MS', 1000, { min: 10 }),
    dispatchTickMs: e.int('GANTRY_DISPATCH_TICK_MS', 250, { min: 10 }),
    maxUnflushedFrames: e.int('GANTRY_MAX_UNFLUSHED_FRAMES', 2000, { min: 10 }),
    localRunners: e.int('GANTRY_LOCAL_RUNNERS', databaseUrl ? 0 : 1, { min: 0, max: 64 }),
    etcdEndpoints: Object.freeze(parseEndpoints(e.str('ETCD_ENDPOINTS'))),
    etcdPrefix: parsePrefix(e.str('GANTRY_ETCD_PREFIX', '/gantry/')),
    coordTtlS: e.int('GANTRY_COORD_TTL_S', 10, { min: 1, max: 300 }),
    leaderDbGraceMs: e.int('GANTRY_LEADER_DB_GRACE_MS', 2000 * e.int('GANTRY_COORD_TTL_S', 10, { min: 1, max: 300 }), { min: 500, max: 600000 }),
    slotReconcileMs: e.int('GANTRY_SLOT_RECONCILE_MS', 2000, { min: 50, max: 600_000 }),
    minRunEveryS: e.int('GANTRY_MIN_RUN_EVERY_S', 60, { min: 1, max: 60 }),
    secretKeys: e.str('GANTRY_SECRET_KEYS'),
    autoscaleTickMs: e.int('GANTRY_AUTOSCALE_TICK_MS', 10_000, { min: 50, max: 600_000 }),
    autoscaleTuning: Object.freeze(parseTuning(e.str('GANTRY_AUTOSCALE_TUNING'))),
    runnerEndpoint: e.str('GANTRY_RUNNER_ENDPOINT'),
    runnerImage: e.str('GANTRY_RUNNER_IMAGE', 'gantry/runner'),
    runnersVersion: e.str('GANTRY_RUNNERS_VERSION', '0.1.0'),
    localRunnerSlots: e.int('GANTRY_LOCAL_RUNNER_SLOTS', 2, { min: 1, max: 256 }),
    localExecutor: e.oneOf('GANTRY_LOCAL_EXECUTOR', 'docker', ['docker', 'noop'] as const),
    ec2Endpoint: e.str('GANTRY_EC2_ENDPOINT'),
    quotas: Object.freeze({
      clusters: e.int('GANTRY_QUOTA_CLUSTERS', DEFAULT_QUOTAS.clusters, { min: 0, max: QUOTA_MAX }),
      codes: e.int('GANTRY_QUOTA_CODES', DEFAULT_QUOTAS.codes, { min: 0, max: QUOTA_MAX }),
      schedules: e.int('GANTRY_QUOTA_SCHEDULES', DEFAULT_QUOTAS.schedules, { min: 0, max: QUOTA_MAX }),
      queuedTasks: e.int('GANTRY_QUOTA_QUEUED_TASKS', DEFAULT_QUOTAS.queuedTasks, { min: 0, max: QUOTA_MAX }),
    }),
    quotaRetryAfterS: e.int('GANTRY_QUOTA_RETRY_AFTER_S', DEFAULT_QUOTA_RETRY_AFTER_S, { min: 1, max: 3600 }),
    metricsToken: parseMetricsToken(e.str('GANTRY_METRICS_TOKEN')),
    ...parseMetricsListen(e, port),
    retention: parseRetention(e),
    deliveries: Object.freeze({
      egress: parseEgressAllow(e.str('GANTRY_WEBHOOK_ALLOW')),
      timeoutMs: e.int('GANTRY_WEBHOOK_TIMEOUT_MS', 10_000, { min: 100, max: 120_000 }),
      retryForS: e.int('GANTRY_WEBHOOK_RETRY_FOR_S', 86_400, { min: 0, max: 30 * 86_400 }),
      retryBaseMs: e.int('GANTRY_WEBHOOK_RETRY_BASE_MS', 10_000, { min: 10, max: 3_600_000 }),
      retryMaxMs: e.int('GANTRY_WEBHOOK_RETRY_MAX_MS', 3_600_000, { min: 10, max: 86_400_000 }),
      inFlight: e.int('GANTRY_WEBHOOK_IN_FLIGHT', 64, { min: 1, max: 10_000 }),
      perProjectInFlight: e.int('GANTRY_WEBHOOK_PROJECT_IN_FLIGHT', 16, { min: 1, max: 1000 }),
      pollMs: e.int('GANTRY_WEBHOOK_POLL_MS', 1000, { min: 10, max: 60_000 }),
      secretOverlapS: e.int('GANTRY_WEBHOOK_SECRET_OVERLAP_S', 86_400, { min: 0, max: 30 * 86_400 }),
      smtp: smtpConfigFromEnv(env),
    }),
    queueLoadIntervalS: e.int('GANTRY_QUEUE_LOAD_INTERVAL_S', 60, { min: 0, max: 3600 }),
    statsIntervalS: e.int('GANTRY_STATS_INTERVAL_S', 10, { min: 1, max: 3600 }),
    operators: Object.freeze(
      (e.str('GANTRY_OPERATORS') ?? '')
        .split(',')
        .map((x) => x.trim().toLowerCase())
        .filter((x) => x !== ''),
    ),
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
  return {
    ...c,
    databaseUrl: undefined,
    database: db,
    secretKeys: c.secretKeys ? '[redacted]' : undefined,
    metricsToken: c.metricsToken ? '[redacted]' : undefined,
    deliveries: {
      ...c.deliveries,
      egress: [...c.deliveries.egress.allowCidrs.map(([a, bits]) => `${a.toString()}/${bits}`), ...c.deliveries.egress.allowHosts],
      smtp: c.deliveries.smtp && {
        host: c.deliveries.smtp.host,
        port: c.deliveries.smtp.port,
        security: c.deliveries.smtp.security,
        from: c.deliveries.smtp.from,
        timeoutMs: c.deliveries.smtp.timeoutMs,
        user: c.deliveries.smtp.user,
        password: c.deliveries.smtp.password ? '[redacted]' : undefined,
        tlsCa: c.deliveries.smtp.tlsCa ? '[set]' : undefined,
      },
    },
  };
}
