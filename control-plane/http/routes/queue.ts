import Router, { type RouterContext } from '@koa/router';
import { parse as parseDuration, toSeconds } from 'iso8601-duration';
import { isId } from '../../../lib/ids.ts';
import { badRequest, notFound } from '../../errors.ts';
import type { TaskStatus } from '../../store/codes.ts';
import type { LoadFilter } from '../../store/queue-load.ts';
import type { RequeueFilter } from '../../store/requeue.ts';
import { requireProject } from '../auth.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import { MAX_LOAD_DAYS, MAX_REQUEUE, REQUEUE_STATUSES, type NewJobInput, type RequeueInput } from '../schema/queue.ts';
import { MAX_PAYLOAD } from '../schema/tasks.ts';
import { presentTask } from '../present.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';
import { optTime, type Obj } from '../validate.ts';
import { authorizeClusters, newTask, parseRunOptions } from './tasks.ts';

const DAY_MS = 86_400_000;
const WEEK_MS = 7 * DAY_MS;
const ISO_RULE = 'an ISO 8601 date-time (e.g. 2026-01-02T15:04:05Z) or an ISO 8601 duration before now (e.g. PT3H0M0S)';

/** The seed's statuses and Gantry's own, as Gantry's. */
const STATUS_OF: Record<(typeof REQUEUE_STATUSES)[number], TaskStatus[]> = {
  CANCELED: ['cancelled'],
  FAILED: ['error', 'timeout', 'killed'],
  cancelled: ['cancelled'],
  error: ['error'],
  timeout: ['timeout'],
  killed: ['killed'],
};

/**
 * An instant given as an ISO 8601 date-time (or seconds since the epoch, as Gantry's other
 * times), or as an ISO 8601 duration meaning that long before `now`. 400 naming the field.
 */
export function isoInstant(v: unknown, field: string, now: Date): Date | undefined {
  if (v === undefined || v === null || v === '') return undefined;
  if (typeof v === 'string' && /^P/i.test(v)) {
    let seconds: number;
    try {
      seconds = toSeconds(parseDuration(v.toUpperCase()), now);
    } catch {
      throw badRequest(`${field} must be ${ISO_RULE}, got ${JSON.stringify(v)}`);
    }
    const d = new Date(now.getTime() - seconds * 1000);
    if (!Number.isFinite(seconds) || Number.isNaN(d.getTime()) || d.getUTCFullYear() < 1) throw badRequest(`${field}: the duration ${v} reaches before year 1`);
    return d;
  }
  try {
    return optTime({ v }, 'v', field);
  } catch {
    throw badRequest(`${field} must be ${ISO_RULE}, got ${JSON.stringify(v)}`);
  }
}

/** `started` and `ended` of a load query: ended defaults to now, started to a week before it; at most MAX_LOAD_DAYS apart. */
export function loadRange(q: Obj, now: Date): { started: Date; ended: Date } {
  const ended = isoInstant(q.ended, 'ended', now) ?? now;
  const started = isoInstant(q.started, 'started', now) ?? new Date(ended.getTime() - WEEK_MS);
  if (started > ended) throw badRequest(`started (${started.toISOString()}) must not be after ended (${ended.toISOString()})`);
  const span = ended.getTime() - started.getTime();
  if (span > MAX_LOAD_DAYS * DAY_MS) {
    throw badRequest(`the range from started to ended must be at most ${MAX_LOAD_DAYS} days, got ${(span / DAY_MS).toFixed(2)} days`);
  }
  return { started, ended };
}

/** A repeatable query parameter or a body list as an array (absent: undefined). */
function many<T>(v: unknown): T[] | undefined {
  if (v === undefined || v === null) return undefined;
  return (Array.isArray(v) ? v : [v]) as T[];
}

/** The API's base URL as the client reached it (GANTRY_PUBLIC_URL when set). */
function origin(ctx: RouterContext<ApiState>): string {
  return ctx.state.deps.config.publicUrl?.replace(/\/+$/, '') ?? `${ctx.protocol}://${ctx.host}`;
}

/**
 * An absolute URL of this server for `path` (with its query). The request's own host (a
 * client's Host or X-Forwarded-Host) may be anything: one no URL can carry gives the path
 * alone, relative to the server, instead of a 500.
 */
function link(ctx: RouterContext<ApiState>, path: string): string {
  try {
    return new URL(path, origin(ctx)).toString();
  } catch {
    return path;
  }
}

/** The URL of another page of this request: `page` replaced (null when there is none). */
export function pageUrl(ctx: RouterContext<ApiState>, base: string, page: number, perPage: number, count: number): string | null {
  if (page < 0 || page * perPage >= count) return null;
  const u = new URL(base, 'http://any.invalid');
  u.searchParams.set('page', String(page));
  u.searchParams.set('per_page', String(perPage));
  return link(ctx, `${u.pathname}${u.search}`);
}

export function paging(q: Obj): { page: number; perPage: number } {
  return { page: (q.page as number | undefined) ?? 0, perPage: (q.per_page as number | undefined) ?? 100 };
}

export function queueRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  r.get('/projects/:projectId/load', requireProject, validated(ep('getLoad')), async (ctx) => {
    const { deps } = ctx.state;
    const q = ctx.state.query!;
    const now = deps.clock.now();
    const { started, ended } = loadRange(q, now);
    const minuteDays = deps.config.retention.queueLoadDays;
    const hourly = q.resolution === 'hour' || (q.resolution === undefined && minuteDays > 0 && started.getTime() < now.getTime() - minuteDays * DAY_MS);
    const filter: LoadFilter = {
      codeIds: many<string>(q.job_type_id),
      codeNames: many<string>(q.job_type_name),
      categories: many<string>(q.job_type_category),
      priorities: many<number>(q.job_type_priority),
    };
    const p = paging(q);
    const { count, points } = await deps.store.queueLoad.load(ctx.state.projectId!, filter, started, ended, p, hourly);
    ctx.body = {
      count,
      next: pageUrl(ctx, ctx.url, p.page + 1, p.perPage, count),
      previous: p.page > 0 ? pageUrl(ctx, ctx.url, Math.min(p.page - 1, Math.ceil(count / p.perPage) - 1), p.perPage, count) : null,
      results: points.map((x) => ({ time: x.time.toISOString(), pending_count: x.pending, queued_count: x.queued, running_count: x.running })),
    };
  });

  r.get('/projects/:projectId/queue/status', requireProject, validated(ep('getQueueStatus')), async (ctx) => {
    const entries = await ctx.state.deps.store.queueLoad.status(ctx.state.projectId!);
    ctx.body = {
      queue_status: entries.map((e) => ({
        job_type_id: e.codeId,
        job_type_name: e.codeName,
        job_type_version: String(e.rev),
        ...(e.category !== null ? { job_type_category: e.category } : {}),
        count: e.count,
        longest_queued: e.longestQueued.toISOString(),
        highest_priority: e.highestPriority,
        is_job_type_paused: e.paused,
      })),
    };
  });

  r.post('/projects/:projectId/queue/new-job', requireProject, validated(ep('queueNewJob')), async (ctx) => {
    const { deps, projectId } = ctx.state;
    const body = ctx.state.body as NewJobInput;
    const code = await deps.store.codes.get(projectId!, body.job_type_id!);
    if (!code) throw notFound(`job_type_id: no code package with id ${body.job_type_id} in this project`);
    const payload = body.job_data === undefined ? '' : JSON.stringify(body.job_data);
    const bytes = Buffer.byteLength(payload);
    if (bytes > MAX_PAYLOAD) throw badRequest(`job_data must be at most ${MAX_PAYLOAD} bytes as JSON text, got ${bytes}`);
    const opts = parseRunOptions(deps, body, '', code);
    opts.cluster = (await authorizeClusters(deps, ctx.state.userId!, [{ cluster: opts.cluster, field: 'cluster' }])).get(opts.cluster)!;
    const [id] = await deps.hub.enqueue([newTask(projectId!, code, payload, opts)]);
    const task = (await deps.store.tasks.get(projectId!, id!))!;
    const waiting = task.status === 'queued' ? (await deps.store.tasks.waitReasons([task.id])).get(task.id) : undefined;
    ctx.status = 201;
    ctx.set('Location', link(ctx, `/2/projects/${projectId}/tasks/${id}`));
    ctx.body = presentTask(task, waiting);
  });

  const requeuedPage = async (ctx: RouterContext<ApiState>, requeueId: string) => {
    const p = paging(ctx.state.query!);
    const made = await ctx.state.deps.store.requeue.made(ctx.state.projectId!, requeueId, p);
    const base = `/2/projects/${ctx.state.projectId}/queue/requeue-jobs/${requeueId}`;
    return {
      count: made.count,
      next: pageUrl(ctx, base, p.page + 1, p.perPage, made.count),
      previous: p.page > 0 ? pageUrl(ctx, base, Math.min(p.page - 1, Math.ceil(made.count / p.perPage) - 1), p.perPage, made.count) : null,
      results: made.tasks.map((t) => presentTask(t)),
      requeue_id: requeueId,
    };
  };

  r.post('/projects/:projectId/queue/requeue-jobs', requireProject, validated(ep('requeueJobs')), async (ctx) => {
    const { deps, projectId } = ctx.state;
    const b = ctx.state.body as RequeueInput;
    const now = deps.clock.now();
    const statuses = new Set<TaskStatus>();
    for (const s of many<string>(b.status) ?? ['CANCELED', 'FAILED']) {
      const mapped = STATUS_OF[s as keyof typeof STATUS_OF];
      if (!Object.hasOwn(STATUS_OF, s) || !mapped) throw badRequest(`status must be one of ${REQUEUE_STATUSES.join(', ')}, got ${JSON.stringify(s)}`);
      for (const m of mapped) statuses.add(m);
    }
    const endedFrom = isoInstant(b.started, 'started', now);
    const endedTo = isoInstant(b.ended, 'ended', now);
    if (endedFrom && endedTo && endedFrom > endedTo) throw badRequest(`started (${endedFrom.toISOString()}) must not be after ended (${endedTo.toISOString()})`);
    const filter: RequeueFilter = {
      statuses: [...statuses],
      ...(endedFrom ? { endedFrom } : {}),
      ...(endedTo ? { endedTo } : {}),
      taskIds: b.job_ids ?? undefined,
      codeIds: b.job_type_ids ?? undefined,
      codeNames: b.job_type_names ?? undefined,
      categories: b.job_type_categories ?? undefined,
    };
    const clusters = await deps.store.requeue.clustersOf(projectId!, filter);
    await authorizeClusters(deps, ctx.state.userId!, clusters.map((c) => ({ cluster: c, field: 'cluster' })));
    const out = await deps.store.requeue.requeue(projectId!, filter, MAX_REQUEUE, b.priority ?? undefined);
    if (out.kind === 'too_many') {
      throw badRequest(
        `at most ${MAX_REQUEUE} tasks are requeued per call, and ${out.matched} match: narrow the filters (started, ended, status, job_ids, job_type_ids, job_type_names, job_type_categories)`,
      );
    }
    if (out.kind === 'refused') throw out.error;
    ctx.state.log.info({ requeueId: out.requeueId, tasks: out.ids.length }, 'tasks requeued');
    if (out.ids.length > 0) deps.hub.tasksReady('*');
    ctx.body = await requeuedPage(ctx, out.requeueId);
  });

  r.get('/projects/:projectId/queue/requeue-jobs/:requeueId', requireProject, validated(ep('listRequeued')), async (ctx) => {
    const id = ctx.params.requeueId ?? '';
    if (!isId(id)) throw notFound('No such requeue');
    const page = await requeuedPage(ctx, id);
    if (page.count === 0) throw notFound('No such requeue (or it requeued nothing)');
    ctx.body = page;
  });

  return r;
}
