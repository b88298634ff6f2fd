import Router, { type RouterContext } from '@koa/router';
import { isId } from '../../../lib/ids.ts';
import { badRequest, notFound } from '../../errors.ts';
import type { NewSchedule } from '../../store/schedules.ts';
import { requireProject } from '../auth.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import { presentSchedule, presentTask } from '../present.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';
import { MAX_RUN_EVERY, type ScheduleInput } from '../schema/schedules.ts';
import { optTime, pagination } from '../validate.ts';
import { authorizeClusters, parseRunOptions, resolveCodes } from './tasks.ts';
import { HooksChecker } from '../hooks.ts';
import { CronError, DEFAULT_TIMEZONE, firstFire, parseCron } from '../../../lib/cron.ts';


export function schedulesRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  const loadSchedule = async (ctx: RouterContext<ApiState>) => {
    const id = ctx.params.scheduleId ?? '';
    const s = isId(id) ? await ctx.state.deps.store.schedules.get(ctx.state.projectId!, id) : undefined;
    if (!s) throw notFound('Schedule not found');
    return s;
  };

  r.get('/projects/:projectId/schedules', requireProject, validated(ep('listSchedules')), async (ctx) => {
    const list = await ctx.state.deps.store.schedules.list(ctx.state.projectId!, pagination(ctx.state.query!));
    ctx.body = { schedules: list.map(presentSchedule) };
  });

  r.post('/projects/:projectId/schedules', requireProject, validated(ep('createSchedules')), async (ctx) => {
    const { deps, projectId } = ctx.state;
    const body = ctx.state.body!;
    // The schema (CreateSchedulesBody) holds 1 to MAX_SCHEDULES objects, each with a code_name.
    const items = (body.schedules as ScheduleInput[]).map((o, i) => ({ o, prefix: `schedules[${i}].`, name: o.code_name! }));
    const codes = await resolveCodes(deps, projectId!, items.map((x) => ({ name: x.name, field: `${x.prefix}code_name` })));
    const now = deps.clock.now();
    const schedules: NewSchedule[] = items.map(({ o, prefix, name }) => {
      const run = parseRunOptions(deps, { ...o, label: undefined }, prefix, codes.get(name)!);
      // The schema bounds run_every; its floor is an operator setting (IronWorker refuses
      // below a minute; only tests lower it, GANTRY_MIN_RUN_EVERY_S).
      const runEvery = o.run_every ?? null;
      if (runEvery !== null && runEvery < deps.config.minRunEveryS) {
        throw badRequest(`${prefix}run_every must be an integer from ${deps.config.minRunEveryS} to ${MAX_RUN_EVERY}, got ${runEvery}`);
      }
      const cron = o.cron ?? null;
      if (cron !== null && runEvery !== null) throw badRequest(`${prefix}cron and ${prefix}run_every cannot both be given: a schedule repeats by one of them`);
      if (o.timezone != null && cron === null) throw badRequest(`${prefix}timezone is only read with ${prefix}cron`);
      const timezone = cron === null ? null : (o.timezone ?? DEFAULT_TIMEZONE);
      if (cron !== null) {
        try {
          parseCron(cron, timezone!);
        } catch (err) {
          if (!(err instanceof CronError)) throw err;
          const what = err.field === 'timezone' ? 'an IANA time zone name' : 'a five-field cron expression (minute hour day-of-month month day-of-week)';
          throw badRequest(`${prefix}${err.field} must be ${what}: ${err.message}`);
        }
      }
      const startAt = optTime(o, 'start_at', `${prefix}start_at`) ?? now;
      const endAt = optTime(o, 'end_at', `${prefix}end_at`) ?? null;
      if (endAt && endAt <= startAt) throw badRequest(`${prefix}end_at must be after start_at`);
      const first = firstFire({ startAt, runEvery, cron, timezone });
      if (endAt && first && first > endAt) {
        throw badRequest(`${prefix}cron has no fire time between start_at and end_at (the first after start_at is ${first.toISOString()})`);
      }
      const label = o.name ?? o.label ?? null;
      return {
        codeName: name,
        name: label,
        payload: o.payload ?? '',
        priority: run.priority,
        timeout: run.timeout,
        cluster: run.cluster,
        taskDelay: run.delay,
        startAt,
        endAt,
        runEvery,
        cron,
        timezone,
        runTimes: o.run_times ?? null,
      };
    });
    const clusters = await authorizeClusters(deps, ctx.state.userId!, schedules.map((s, i) => ({ cluster: s.cluster, field: `schedules[${i}].cluster` })));
    for (const s of schedules) s.cluster = clusters.get(s.cluster)!;
    const hooks = new HooksChecker(deps, projectId!);
    for (const [i, { o, prefix }] of items.entries()) schedules[i]!.hooks = await hooks.accept(o, prefix);
    const ids = await deps.store.schedules.create(projectId!, schedules);
    ctx.body = { msg: 'Scheduled', schedules: ids.map((id) => ({ id })) };
  });

  r.get('/projects/:projectId/schedules/:scheduleId', requireProject, validated(ep('getSchedule')), async (ctx) => {
    ctx.body = presentSchedule(await loadSchedule(ctx));
  });

  r.get('/projects/:projectId/schedules/:scheduleId/tasks', requireProject, validated(ep('listScheduleTasks')), async (ctx) => {
    const sched = await loadSchedule(ctx);
    const tasks = ctx.state.deps.store.tasks;
    const list = await tasks.list(ctx.state.projectId!, { scheduleId: sched.id }, pagination(ctx.state.query!));
    const waiting = await tasks.waitReasons(list.filter((x) => x.status === 'queued').map((x) => x.id));
    ctx.body = { tasks: list.map((x) => presentTask(x, waiting.get(x.id))) };
  });

  r.post('/projects/:projectId/schedules/:scheduleId/cancel', requireProject, validated(ep('cancelSchedule')), async (ctx) => {
    const s = await loadSchedule(ctx);
    const after = await ctx.state.deps.store.schedules.cancel(ctx.state.projectId!, s.id);
    if (after?.status === 'complete') throw badRequest('Schedule already complete; nothing to cancel');
    ctx.body = { msg: 'Cancelled' };
  });

  return r;
}
