import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { collectProcessMetrics } from '../lib/process-metrics.ts';
import type { GaugeReadings, QueueDepth } from './store/gauges.ts';

/** Most (cluster, code) series a per-package metric keeps; the rest are folded into `code="other"`. */
export const CODE_LABEL_CAP = 200;
/** How long one reading of the database's gauges serves scrapes: several scrapes a second cost one read. */
export const READING_TTL_MS = 5000;

/** Where the scrape-time gauges come from (start.ts wires the store and the dispatcher in). */
export interface ScrapeSources {
  /** One reading of the queue and fleet gauges (store/gauges.ts); throws when the database cannot answer. */
  readGauges(): Promise<GaugeReadings>;
  /** The database answers, as /readyz sees it. */
  databaseUp(): Promise<boolean>;
  /** Free slots the runners whose sessions this replica holds report (less offers they had not seen). */
  freeSlots(): number;
}

const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']);
const SECONDS_BUCKETS_LONG = [0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400];
const SECONDS_BUCKETS_WAIT = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14400];

/**
 * Label values of a per-package histogram, bounded: the first CODE_LABEL_CAP (cluster, code)
 * pairs seen keep their code name, later ones are `other`. Cluster names come from leases,
 * which only real clusters' runners hold.
 */
export class CodeLabels {
  private readonly seen = new Set<string>();
  constructor(private readonly cap = CODE_LABEL_CAP) {}

  of(cluster: string, code: string): { cluster: string; code: string } {
    const key = `${cluster}\u0000${code}`;
    if (this.seen.has(key)) return { cluster, code };
    if (this.seen.size < this.cap) {
      this.seen.add(key);
      return { cluster, code };
    }
    return { cluster, code: 'other' };
  }
}

/**
 * Queue depth by (cluster, code), at most `cap` pairs: the deepest keep their names, the rest
 * are summed into (cluster, `other`), or (`other`, `other`) when their cluster is not among
 * those kept (tasks may name clusters that do not exist, so clusters are bounded too).
 */
export function foldQueue(rows: readonly QueueDepth[], cap = CODE_LABEL_CAP): { cluster: string; code: string; n: number }[] {
  const sorted = [...rows].sort((a, b) => b.ready - a.ready || a.cluster.localeCompare(b.cluster) || a.code.localeCompare(b.code));
  const kept = sorted.slice(0, cap);
  const clusters = new Set(kept.map((r) => r.cluster));
  const out = new Map<string, { cluster: string; code: string; n: number }>();
  const add = (cluster: string, code: string, n: number) => {
    const key = `${cluster}\u0000${code}`;
    const o = out.get(key);
    if (o) o.n += n;
    else out.set(key, { cluster, code, n });
  };
  for (const r of kept) add(r.cluster, r.code, r.ready);
  for (const r of sorted.slice(cap)) add(clusters.has(r.cluster) ? r.cluster : 'other', 'other', r.ready);
  return [...out.values()];
}

/** The control plane's Prometheus metrics (proto/README.md, 9 Metrics), one registry per instance. */
export class ControlPlaneMetrics {
  readonly registry = new Registry();
  private sources: ScrapeSources | undefined;
  private reading: { at: number; value: Promise<GaugeReadings | undefined> } | undefined;
  private readonly codeLabels = new CodeLabels();

  readonly offers = this.counter('gantry_offers_total', 'Offers sent to runners');
  readonly offerResults = this.counter('gantry_offer_results_total', 'What became of offers', ['result']);
  readonly completions = this.counter('gantry_completions_total', 'Task results reported by runners', ['outcome', 'disposition']);
  readonly reclaimed = this.counter('gantry_leases_reclaimed_total', 'Leases taken back from runners', ['reason']);
  readonly sessions = this.gauge('gantry_runner_sessions', 'Connected runner sessions');
  readonly creditSlots = this.gauge(
    'gantry_runner_credit_slots',
    "Free slots the runners of this replica's sessions report (less offers they had not seen)",
    async (g) => {
      if (this.sources) g.set(this.sources.freeSlots());
    },
  );
  readonly frames = this.counter('gantry_stream_frames_total', 'Runner protocol frames', ['type', 'dir']);
  readonly handOffs = this.counter('gantry_task_handoffs_total', 'New tasks granted to an idle runner in the same statement that queued them');
  readonly deliveries = this.counter(
    'gantry_deliveries_total',
    'Attempts of outcome webhooks and e-mails, by kind and result: delivered, retried (it failed and will be tried again), failed (given up)',
    ['kind', 'result'],
  );
  readonly deliverySeconds = this.histogram(
    'gantry_delivery_duration_seconds',
    'How long one attempt of an outcome webhook or e-mail took, by kind',
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    ['kind'],
  );
  readonly logBytes = this.counter('gantry_log_bytes_total', 'Task log bytes stored');
  readonly dispatchLatency = this.histogram(
    'gantry_dispatch_latency_seconds',
    'Time from a task being offered to its container starting',
    [0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
  );
  readonly queueWait = this.histogram(
    'gantry_task_queue_wait_seconds',
    'Time from a task becoming eligible (created plus delay) to its container starting, by cluster and code package',
    SECONDS_BUCKETS_WAIT,
    ['cluster', 'code'],
  );
  readonly runTime = this.histogram(
    'gantry_task_run_seconds',
    "Time from a task's container starting to its end, as its runner reports, by cluster and code package",
    SECONDS_BUCKETS_LONG,
    ['cluster', 'code'],
  );
  readonly penalties = this.counter(
    'gantry_runner_penalties_total',
    'Penalties given to runners for their own faults: runner_error (could not run a task), offer_rejected',
    ['reason'],
  );

  readonly httpRequests = this.counter(
    'gantry_http_requests_total',
    'REST API requests by route pattern (unmatched: no route), method and status',
    ['route', 'method', 'status'],
  );
  readonly httpDuration = this.histogram(
    'gantry_http_request_duration_seconds',
    'REST API request latency by route pattern and method',
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    ['route', 'method'],
  );

  readonly coordinatorUp = this.gauge(
    'gantry_coordinator_up',
    '1 when the coordinator (etcd, or local) is reachable and this replica holds a live session',
  );
  readonly databaseUp = this.gauge('gantry_database_up', '1 when the database answers (as /readyz checks it), read at scrape time', async (g) => {
    if (this.sources) g.set((await this.sources.databaseUp().catch(() => false)) ? 1 : 0);
  });
  readonly isLeader = this.gauge('gantry_leader', '1 while this replica leads the singleton loops');
  readonly slotsReconciled = this.counter(
    'gantry_concurrency_slots_reconciled_total',
    'Concurrency slots the leader removed (holder ended) or restored (holder alive, slot lost)',
    ['action'],
  );
  readonly slotConflicts = this.counter(
    'gantry_concurrency_slot_conflicts_total',
    'Live leases the reconciler found no free slot for (more live leases than the limit)',
  );
  readonly retentionDeleted = this.counter(
    'gantry_retention_deleted_total',
    'Rows the retention job deleted, by kind: tasks, log_chunks, leases, schedules',
    ['kind'],
  );
  readonly slotRefusals = this.counter(
    'gantry_concurrency_slot_refusals_total',
    'Claimed tasks returned to the queue because no concurrency slot could be taken',
  );

  // Read from the database at scrape time (one cached reading for all of them); the same
  // from every replica, so alert on max() across replicas (README, "Metrics and alerts").
  readonly tasksQueued = this.dbGauge(
    'gantry_tasks_queued',
    'Queued tasks eligible now, by cluster and code package name (the deepest 200 pairs; the rest as code="other")',
    ['cluster', 'code'],
    (g, r) => {
      for (const q of foldQueue(r.queue)) g.set({ cluster: q.cluster, code: q.code }, q.n);
    },
  );
  readonly tasksLive = this.dbGauge('gantry_tasks', 'Live tasks by status: queued (delayed ones included) and running', ['status'], (g, r) => {
    g.set({ status: 'queued' }, r.queue.reduce((n, q) => n + q.queued, 0));
    g.set({ status: 'running' }, r.leases.reduce((n, l) => n + l.running, 0));
  });
  readonly tasksRecent = this.dbGauge('gantry_tasks_recent', 'Tasks created in the last hour, by their status now', ['status'], (g, r) => {
    for (const s of r.recent) g.set({ status: s.status }, s.n);
  });
  readonly fleetInstances = this.dbGauge(
    'gantry_fleet_instances',
    'Instances launched for a cluster and not terminated, by state (add, live, kill)',
    ['cluster', 'state'],
    (g, r) => {
      for (const i of r.instances) g.set({ cluster: i.cluster, state: i.state.toLowerCase() }, i.n);
    },
  );
  readonly fleetRunners = this.dbGauge('gantry_fleet_runners', 'Runners connected to any replica (beating), by cluster', ['cluster'], (g, r) => {
    for (const x of r.runners) g.set({ cluster: x.cluster }, x.runners);
  });
  readonly fleetSlots = this.dbGauge(
    'gantry_fleet_slots',
    "Runner slots by cluster: busy (held by a live lease) and free (connected, not draining runners' slots less the busy ones)",
    ['cluster', 'state'],
    (g, r) => {
      const busy = new Map(r.leases.map((l) => [l.cluster, l.live]));
      for (const x of r.runners) if (!busy.has(x.cluster)) busy.set(x.cluster, 0);
      for (const [cluster, n] of busy) {
        const slots = r.runners.find((x) => x.cluster === cluster)?.slots ?? 0;
        g.set({ cluster, state: 'busy' }, n);
        g.set({ cluster, state: 'free' }, Math.max(0, slots - n));
      }
    },
  );
  readonly fleetPenalised = this.dbGauge(
    'gantry_fleet_runners_penalised',
    'Connected runners offered nothing now because of a penalty for their own faults, by cluster',
    ['cluster'],
    (g, r) => {
      for (const x of r.runners) g.set({ cluster: x.cluster }, x.penalised);
    },
  );

  constructor() {
    collectProcessMetrics(this.registry);
  }

  /** Connects the scrape-time gauges to their sources; until then they export nothing. */
  readFrom(sources: ScrapeSources): void {
    this.sources = sources;
  }

  /** A task's container started (a Started report, or one folded into its result). */
  taskStarted(cluster: string, code: string, eligibleAt: Date | null, startedAtMs: number): void {
    if (!eligibleAt || !(startedAtMs > 0)) return;
    this.queueWait.observe(this.codeLabels.of(cluster, code), Math.max(0, startedAtMs - eligibleAt.getTime()) / 1000);
  }

  /** A task's result was recorded: its run time as its runner measured it (both ends on the runner's clock). */
  taskRan(cluster: string, code: string, startedAtMs: number, finishedAtMs: number): void {
    if (!(startedAtMs > 0) || !(finishedAtMs >= startedAtMs)) return;
    this.runTime.observe(this.codeLabels.of(cluster, code), (finishedAtMs - startedAtMs) / 1000);
  }

  /** One finished REST request; `route` is the matched pattern or `unmatched`. */
  httpRequest(route: string, method: string, status: number, seconds: number): void {
    const m = HTTP_METHODS.has(method) ? method : 'other';
    this.httpRequests.inc({ route, method: m, status: String(status) });
    this.httpDuration.observe({ route, method: m }, seconds);
  }

  private counter<L extends string = never>(name: string, help: string, labelNames: L[] = []): Counter<L> {
    return new Counter<L>({ name, help, labelNames, registers: [this.registry] });
  }

  private histogram<L extends string = never>(name: string, help: string, buckets: number[], labelNames: L[] = []): Histogram<L> {
    return new Histogram<L>({ name, help, labelNames, buckets, registers: [this.registry] });
  }

  /** A gauge; with `collect`, set by it at every scrape. */
  private gauge<L extends string = never>(name: string, help: string, collect?: (g: Gauge<L>) => Promise<void>, labelNames: L[] = []): Gauge<L> {
    const g: Gauge<L> = new Gauge<L>({
      name,
      help,
      labelNames,
      registers: [this.registry],
      ...(collect ? { collect: () => collect(g) } : {}),
    });
    return g;
  }

  /** The database's gauges, read at most once per READING_TTL_MS; undefined when the read failed. */
  private gaugeReadings(): Promise<GaugeReadings | undefined> {
    const sources = this.sources;
    if (!sources) return Promise.resolve(undefined);
    const now = Date.now();
    if (!this.reading || now - this.reading.at >= READING_TTL_MS) {
      this.reading = { at: now, value: sources.readGauges().catch(() => undefined) };
    }
    return this.reading.value;
  }

  private dbGauge<L extends string>(name: string, help: string, labelNames: L[], fill: (g: Gauge<L>, r: GaugeReadings) => void): Gauge<L> {
    return this.gauge<L>(
      name,
      help,
      async (g) => {
        const r = await this.gaugeReadings();
        g.reset();
        if (r) fill(g, r);
      },
      labelNames,
    );
  }
}
