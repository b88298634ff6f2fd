import Router, { type RouterContext } from '@koa/router';
import type { Middleware } from 'koa';
import { ConflictError, HttpError, badRequest, notFound } from '../../errors.ts';
import { METRIC_NAMES, categoryOf, flattenReported, type ReportedStats } from '../../series/machine-stats.ts';
import { planRanges } from '../../series/read-plan.ts';
import type { StatSeries } from '../../store/series.ts';
import type { WorkerRecord } from '../../store/workers.ts';
import { isOperator, requireUser } from '../auth.ts';
import { validated } from '../schema/endpoint.ts';
import { ep } from '../schema/index.ts';
import { AGGREGATIONS, DEFAULT_TIMEOUT_S, MAX_POINTS } from '../schema/workers.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';

/**
 * The workers service (ClearML's) under /2/workers.*: the fleet as data (README, "Fleet
 * stats"). Reads show the workers of clusters the user owns (operator clusters only to the
 * users GANTRY_OPERATORS names); another user's worker answers 404, like one that does not
 * exist. Writes are a third-party worker's, authenticated by its cluster's id and runner
 * token; Gantry's own runners enter the registry through their gRPC sessions only.
 */

type Ctx = RouterContext<ApiState>;
type Aggregation = (typeof AGGREGATIONS)[number];

/** `X-Gantry-Cluster-Id` and `Authorization: Bearer <runner token>`; sets `ctx.state.clusterId`. */
const requireClusterToken: Middleware<ApiState> = async (ctx, next) => {
  const sent = ctx.req.headersDistinct.authorization?.length ?? 0;
  if (sent > 1) throw badRequest(`Send one Authorization header; this request has ${sent}`);
  const m = /^Bearer\s+(\S+)\s*$/.exec(ctx.get('Authorization'));
  const clusterId = ctx.get('X-Gantry-Cluster-Id');
  if (!m || !clusterId) {
    throw new HttpError(401, 'A worker reports with its cluster\'s runner token: send "Authorization: Bearer <runner token>" and "X-Gantry-Cluster-Id: <cluster id>"', { code: 'unauthorized' });
  }
  const cluster = clusterId.length <= 64 ? await ctx.state.deps.store.clusters.authenticate(clusterId, m[1]!) : undefined;
  if (!cluster) throw new HttpError(401, 'Invalid cluster id or runner token', { code: 'unauthorized' });
  ctx.state.clusterId = cluster.id;
  await next();
};

/** The clusters whose workers the user sees. */
async function visible(ctx: Ctx) {
  return ctx.state.deps.store.workers.visibleClusters(ctx.state.userId!, await isOperator(ctx));
}

/** The requested worker ids, each one the user sees (404 naming the first that is not). */
async function requireWorkers(ctx: Ctx, clusterIds: string[], ids: string[] | null | undefined): Promise<string[] | undefined> {
  const wanted = [...new Set(ids ?? [])];
  if (wanted.length === 0) return undefined;
  const known = clusterIds.length > 0 ? await ctx.state.deps.store.series.known(clusterIds, wanted) : new Set<string>();
  const missing = wanted.find((id) => !known.has(id));
  if (missing !== undefined) throw notFound(`worker_ids: no worker ${JSON.stringify(missing)} in your clusters`);
  return wanted;
}

/** from_date before to_date, and at most MAX_POINTS intervals between them (400 naming the field and the limit). */
function timeRange(b: { from_date?: number; to_date?: number; interval?: number }): { from: Date; to: Date; intervalS: number } {
  const from = b.from_date!;
  const to = b.to_date!;
  const intervalS = b.interval!;
  if (to <= from) throw badRequest(`to_date must be after from_date (${from}), got ${to}`);
  const least = Math.ceil((to - from) / MAX_POINTS);
  if (intervalS < least) throw badRequest(`interval must be at least ${least} seconds for a range of ${to - from} seconds (at most ${MAX_POINTS} points), got ${intervalS}`);
  return { from: new Date(from * 1000), to: new Date(to * 1000), intervalS };
}

function present(w: WorkerRecord, now: Date) {
  const penalised = w.penaltyUntil !== null && w.penaltyUntil.getTime() > now.getTime();
  const first = w.tasks[0];
  return {
    id: w.id,
    key: w.id,
    cluster: w.cluster,
    external: w.external,
    state: w.state,
    hostname: w.hostname,
    ip: w.address,
    version: w.agentVersion,
    docker_version: w.dockerVersion,
    instance: w.instance,
    tags: w.tags,
    queues: w.external ? w.queues.map((q) => ({ id: q, name: q })) : [w.cluster],
    queue: w.queue === null ? null : w.external ? { id: w.queue, name: w.queue } : w.cluster,
    slots: { busy: w.slotsBusy, total: w.slotsTotal },
    tasks: w.tasks.map((t) => ({ id: t.id, name: t.name, lease_id: t.leaseId, slot: t.slot, running_time: t.runningTimeS })),
    task: first ? { id: first.id, name: first.name, running_time: first.runningTimeS } : null,
    replica: w.replica,
    register_time: w.firstSeen.toISOString(),
    last_activity_time: w.lastSeen?.toISOString() ?? null,
    last_report_time: w.lastSeen?.toISOString() ?? null,
    draining: w.draining,
    penalised,
    penalty_until: penalised ? w.penaltyUntil!.toISOString() : null,
    penalty_reason: penalised ? w.penaltyReason : null,
    timeout: w.timeoutS,
  };
}

/** Buckets as get_stats answers them: per worker, per metric (and variant), dates and the requested statistics. */
function statsReply(series: StatSeries[], wanted: Map<string, Aggregation[]>, split: boolean) {
  const workers = new Map<string, StatSeries[]>();
  for (const s of series) {
    const list = workers.get(s.runnerId) ?? [];
    workers.set(s.runnerId, list);
    list.push(s);
  }
  return [...workers].map(([worker, list]) => ({
    worker,
    metrics: list.map((s) => ({
      metric: s.metric,
      ...(split ? { variant: s.variant } : {}),
      dates: s.dates,
      stats: (wanted.get(s.metric) ?? ['avg']).map((aggregation) => ({ aggregation, values: s[aggregation] })),
    })),
  }));
}

export function workersRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  r.post('/workers.register', requireClusterToken, validated(ep('registerWorker')), async (ctx) => {
    const b = ctx.state.body as { worker: string; timeout?: number; queues?: string[] | null; tags?: string[] | null };
    const done = await ctx.state.deps.store.workers.register({
      id: b.worker,
      clusterId: ctx.state.clusterId!,
      address: ctx.ip,
      timeoutS: b.timeout ?? DEFAULT_TIMEOUT_S,
      ...(b.tags ? { tags: [...new Set(b.tags)] } : {}),
      ...(b.queues ? { queues: [...new Set(b.queues)] } : {}),
    });
    if (done === 'taken') throw taken(b.worker);
    ctx.body = {};
  });

  r.post('/workers.status_report', requireClusterToken, validated(ep('reportWorkerStatus')), async (ctx) => {
    const b = ctx.state.body as { worker: string; task?: string; queue?: string; queues?: string[] | null; tags?: string[] | null; machine_stats?: ReportedStats | null };
    const { store, stats } = ctx.state.deps;
    const done = await store.workers.report({
      id: b.worker,
      clusterId: ctx.state.clusterId!,
      address: ctx.ip,
      task: b.task ?? '',
      queue: b.queue ?? '',
      ...(b.tags ? { tags: [...new Set(b.tags)] } : {}),
      ...(b.queues ? { queues: [...new Set(b.queues)] } : {}),
    });
    if (done === 'taken') throw taken(b.worker);
    if (done === 'unknown') throw notFound(`worker ${JSON.stringify(b.worker)} is not registered (or its registration timed out): call workers.register first`);
    if (b.machine_stats) stats?.observeFlat(b.worker, ctx.state.clusterId!, flattenReported(b.machine_stats, b.task ? 1 : 0));
    ctx.body = {};
  });

  r.post('/workers.unregister', requireClusterToken, validated(ep('unregisterWorker')), async (ctx) => {
    const b = ctx.state.body as { worker: string };
    const done = await ctx.state.deps.store.workers.unregister(b.worker, ctx.state.clusterId!);
    if (done === 'taken') throw taken(b.worker);
    if (done === 'unknown') throw notFound(`worker ${JSON.stringify(b.worker)} is not registered`);
    ctx.state.deps.stats?.forget(b.worker);
    ctx.body = {};
  });

  r.post('/workers.get_all', requireUser, validated(ep('listWorkers')), async (ctx) => {
    const b = ctx.state.body as { last_seen?: number | string | null };
    const lastSeen = b.last_seen === undefined || b.last_seen === null ? 3600 : b.last_seen === 'none' ? 0 : Number(b.last_seen);
    const clusters = await visible(ctx);
    const list = clusters.length > 0 ? await ctx.state.deps.store.workers.list(clusters.map((c) => c.id), lastSeen > 0 ? { lastSeenS: lastSeen } : {}) : [];
    const now = ctx.state.deps.clock.now();
    ctx.body = { workers: list.map((w) => present(w, now)) };
  });

  r.post('/workers.get_metric_keys', requireUser, validated(ep('getWorkerMetricKeys')), async (ctx) => {
    const b = ctx.state.body as { worker_ids?: string[] | null };
    const clusterIds = (await visible(ctx)).map((c) => c.id);
    const ids = await requireWorkers(ctx, clusterIds, b.worker_ids);
    const keys = clusterIds.length > 0 ? await ctx.state.deps.store.series.metricKeys(clusterIds, ids) : [];
    const rank = (k: string) => (METRIC_NAMES.includes(k) ? METRIC_NAMES.indexOf(k) : METRIC_NAMES.length);
    const categories = new Map<string, string[]>();
    for (const k of [...keys].sort((a, b) => rank(a) - rank(b) || a.localeCompare(b))) {
      const c = categoryOf(k);
      categories.set(c, [...(categories.get(c) ?? []), k]);
    }
    ctx.body = { categories: [...categories].map(([name, metric_keys]) => ({ name, metric_keys })) };
  });

  r.post('/workers.get_stats', requireUser, validated(ep('getWorkerStats')), async (ctx) => {
    const b = ctx.state.body as { worker_ids?: string[] | null; from_date?: number; to_date?: number; interval?: number; items?: { key?: string; category?: Aggregation }[] | null; split_by_variant?: boolean };
    const range = timeRange(b);
    const { store, config, clock } = ctx.state.deps;
    const clusterIds = (await visible(ctx)).map((c) => c.id);
    const ids = await requireWorkers(ctx, clusterIds, b.worker_ids);
    const wanted = new Map<string, Aggregation[]>();
    for (const item of b.items ?? []) {
      const list = wanted.get(item.key!) ?? [];
      const a = item.category ?? 'avg';
      if (!list.includes(a)) list.push(a);
      wanted.set(item.key!, list);
    }
    const split = b.split_by_variant ?? false;
    if (clusterIds.length === 0) {
      ctx.body = { workers: [] };
      return;
    }
    const ranges = planRanges({ ...range, watermarks: await store.series.watermarks(), now: clock.now(), retention: config.retention });
    // What the read costs, bounded before it runs: a question whose table is not rolled up
    // yet (a month by the hour before the first hourly roll-up) reads minutes, and without a
    // bound it would outlast the query timeout and answer 503.
    const instants = stored(ranges.raw, config.statsIntervalS) + stored(ranges.m, 60) + stored(ranges.h, 3600);
    const workers = ids?.length ?? (await store.series.runnerCount(clusterIds));
    const samples = Math.ceil(instants) * workers * Math.max(1, wanted.size);
    if (samples > MAX_READ_SAMPLES) {
      throw badRequest(
        `this get_stats would read about ${samples} samples (${workers} workers × ${wanted.size} keys × ${Math.ceil(instants)} stored instants each), at most ${MAX_READ_SAMPLES}: ask for fewer worker_ids or items, or a shorter from_date..to_date`,
      );
    }
    const series = await store.series.read({ clusterIds, ...(ids ? { runnerIds: ids } : {}), keys: [...wanted.keys()], split, intervalS: range.intervalS, ranges });
    ctx.body = { workers: statsReply(series, wanted, split) };
  });

  r.post('/workers.get_activity_report', requireUser, validated(ep('getWorkerActivity')), async (ctx) => {
    const range = timeRange(ctx.state.body as { from_date?: number; to_date?: number; interval?: number });
    const { store, config, clock } = ctx.state.deps;
    const clusterIds = (await visible(ctx)).map((c) => c.id);
    const rows =
      clusterIds.length === 0
        ? []
        : await store.series.activity({
            clusterIds,
            intervalS: range.intervalS,
            ranges: planRanges({ ...range, watermarks: await store.series.watermarks(), now: clock.now(), retention: config.retention }),
          });
    const dates = rows.map((x) => x.date);
    ctx.body = { total: { dates, counts: rows.map((x) => x.total) }, active: { dates, counts: rows.map((x) => x.active) } };
  });

  return r;
}

/** The most samples (one key of one worker at one stored instant) one get_stats reads: a few seconds of the database's time. */
const MAX_READ_SAMPLES = 1_000_000;

/** Stored instants of a level in a read range, at its resolution in seconds. */
const stored = (r: readonly [Date, Date], resolutionS: number) => Math.max(0, (r[1].getTime() - r[0].getTime()) / 1000 / resolutionS);

const taken = (id: string) => new ConflictError(`worker ${JSON.stringify(id)} is taken: a Gantry runner or another cluster's worker has that id`);
