import type { Clock } from '../../lib/clock.ts';
import type { IdSource } from '../../lib/ids.ts';
import type { Logger } from '../../lib/logger.ts';
import { AccountsStore } from './accounts.ts';
import { CodesStore } from './codes.ts';
import type { Db } from './db.ts';
import { openPglite, openPostgres } from './db.ts';
import { migrate } from './migrate.ts';
import { StoreUnavailableError } from '../errors.ts';
import { GantryError } from '../../lib/errors.ts';
import { SchedulesStore } from './schedules.ts';
import { TasksStore } from './tasks.ts';
import { ClustersStore } from './clusters.ts';
import { ClaimsStore } from './claims.ts';
import { LeasesStore } from './leases.ts';
import { OutcomesStore } from './outcomes.ts';
import { RunnersStore } from './runners.ts';
import { LogsStore } from './logs.ts';
import { ExecutionsStore } from './executions.ts';
import { StatusStore } from './status.ts';
import { AutoscaleStore } from './autoscale.ts';
import { QuotasStore } from './quotas.ts';
import { GaugesStore } from './gauges.ts';
import { RetentionStore } from './retention.ts';
import { QueueLoadStore } from './queue-load.ts';
import { RequeueStore } from './requeue.ts';
import { SeriesStore } from './series.ts';
import { WorkersStore } from './workers.ts';
import { DeliveriesStore } from './deliveries.ts';
import type { SecretBox } from '../../lib/secretbox.ts';

export type { Db } from './db.ts';

/** The system of record, named by domain operations. */
export class Store {
  readonly accounts: AccountsStore;
  readonly codes: CodesStore;
  readonly tasks: TasksStore;
  readonly schedules: SchedulesStore;
  readonly clusters: ClustersStore;
  readonly runners: RunnersStore;
  /** How queued tasks become offered leases. */
  readonly claims: ClaimsStore;
  /** Leases while they live: accept, start, renew, progress, cancels. */
  readonly leases: LeasesStore;
  /** How leases end: results, releases, reclaims, sweeps, timeouts. */
  readonly outcomes: OutcomesStore;
  readonly logs: LogsStore;
  readonly executions: ExecutionsStore;
  readonly status: StatusStore;
  readonly autoscale: AutoscaleStore;
  readonly quotas: QuotasStore;
  /** Scrape-time readings of the queue and the fleet (Prometheus gauges). */
  readonly gauges: GaugesStore;
  /** Deleting finished, old rows in bounded batches (the leader's retention job). */
  readonly retention: RetentionStore;
  /** The queue as data: recorded load series and the queue's status now. */
  readonly queueLoad: QueueLoadStore;
  /** Requeueing finished tasks in bulk, as linked new tasks. */
  readonly requeue: RequeueStore;
  /** Recorded machine stats: raw samples, roll-ups, the workers API's reads. */
  readonly series: SeriesStore;
  /** The workers registry as the workers API shows it, and third-party workers' registrations. */
  readonly workers: WorkersStore;
  /** The outbox of outcome webhooks and e-mails, and the projects' signing secrets. */
  readonly deliveries: DeliveriesStore;

  constructor(
    readonly db: Db,
    readonly clock: Clock,
    ids: IdSource,
  ) {
    const ctx = { db, clock, ids };
    this.quotas = new QuotasStore(ctx);
    this.accounts = new AccountsStore(ctx);
    this.codes = new CodesStore(ctx, this.quotas);
    this.tasks = new TasksStore(ctx, this.quotas);
    this.schedules = new SchedulesStore(ctx, this.tasks, this.quotas);
    this.clusters = new ClustersStore(ctx, this.quotas);
    this.runners = new RunnersStore(ctx);
    this.claims = new ClaimsStore(ctx, this.tasks);
    this.leases = new LeasesStore(ctx);
    this.outcomes = new OutcomesStore(ctx, this.tasks, this.leases);
    this.logs = new LogsStore(ctx);
    this.executions = new ExecutionsStore(ctx);
    this.status = new StatusStore(ctx);
    this.autoscale = new AutoscaleStore(ctx);
    this.gauges = new GaugesStore(ctx);
    this.retention = new RetentionStore(ctx);
    this.queueLoad = new QueueLoadStore(ctx);
    this.requeue = new RequeueStore(ctx, this.quotas);
    this.series = new SeriesStore(ctx);
    this.workers = new WorkersStore(ctx);
    this.deliveries = new DeliveriesStore(ctx);
  }

  /** Installs the keys secrets at rest are sealed with (lib/secretbox.ts loadSecretBox): clusters' and signing secrets. */
  useSecrets(box: SecretBox): void {
    this.clusters.useSecrets(box);
    this.deliveries.useSecrets(box);
  }

  close(): Promise<void> {
    return this.db.close();
  }
}

export interface OpenStoreOptions {
  databaseUrl: string | undefined;
  dataDir: string;
  pgPoolMax: number;
  pgConnectTimeoutMs: number;
  pgQueryTimeoutMs: number;
  /**
   * How long an unreachable PostgreSQL is retried, with backoff, before `openStore` gives up
   * (a replica started before its database comes up waits rather than crash-looping);
   * 0 waits forever, absent does not wait.
   */
  dbStartWaitSeconds?: number;
}

/** Opens PostgreSQL (DATABASE_URL) or PGlite (dataDir) and brings the schema up to date. */
export async function openStore(o: OpenStoreOptions, log: Logger, clock: Clock, ids: IdSource): Promise<Store> {
  const wait = o.dbStartWaitSeconds;
  const deadline = wait === undefined ? Date.now() : wait === 0 ? Infinity : Date.now() + wait * 1000;
  for (let delay = 250; ; delay = Math.min(delay * 2, 5000)) {
    try {
      return await openOnce(o, log, clock, ids);
    } catch (err) {
      if (!(err instanceof StoreUnavailableError) || Date.now() + delay > deadline) throw err;
      log.warn({ err: err.message, retryInMs: delay }, 'database unreachable at start; waiting for it');
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

/**
 * DATABASE_URL names a database that does not exist: what to run, in one line. Not
 * retried: waiting does not make it.
 */
export class DatabaseMissingError extends GantryError {
  constructor(url: string) {
    const u = new URL(url);
    const name = decodeURIComponent(u.pathname.replace(/^\//, '')) || u.username || 'postgres';
    const conn = [`-h ${u.hostname || 'localhost'}`, u.port ? `-p ${u.port}` : '', u.username ? `-U ${decodeURIComponent(u.username)}` : ''].filter(Boolean).join(' ');
    super(
      'database_missing',
      `the database ${JSON.stringify(name)} does not exist on ${u.hostname || 'localhost'}${u.port ? `:${u.port}` : ''}; create it with: createdb ${conn} ${name}`,
      { kind: 'misconfigured' },
    );
  }
}

async function openOnce(o: OpenStoreOptions, log: Logger, clock: Clock, ids: IdSource): Promise<Store> {
  const db = o.databaseUrl
    ? openPostgres({
        url: o.databaseUrl,
        poolMax: o.pgPoolMax,
        connectTimeoutMs: o.pgConnectTimeoutMs,
        queryTimeoutMs: o.pgQueryTimeoutMs,
        log,
      })
    : await openPglite(o.dataDir);
  try {
    await migrate(db, log);
  } catch (err) {
    await db.close().catch(() => undefined);
    // invalid_catalog_name: the server answered, the database is not there.
    if (o.databaseUrl && (err as { code?: string }).code === '3D000') throw new DatabaseMissingError(o.databaseUrl);
    throw err;
  }
  return new Store(db, clock, ids);
}
