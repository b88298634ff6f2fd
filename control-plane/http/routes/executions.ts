import Router, { type RouterContext } from '@koa/router';
import { HttpError, notFound } from '../../errors.ts';
import type { Execution } from '../../store/executions.ts';
import { requireProject } from '../auth.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import { presentExecution } from '../present.ts';
import { ROUTER_OPTIONS, type ApiState } from '../state.ts';
import { flag } from '../validate.ts';
import { answerFollow, answerStreamPage, logMode, startOffset, type FollowStart } from '../log-follow.ts';
import { takeUpgrade } from '../log-socket.ts';
import { cancelTask, loadTask } from './tasks.ts';

/** The seed's separator between an execution's stdout and stderr (`?split=1`). */
const SPLIT = '\n-=-\n';

/** Execution `:number` of the task `:taskId`, or 404. */
async function loadExecution(ctx: RouterContext<ApiState>): Promise<Execution> {
  const task = await loadTask(ctx);
  const n = /^[1-9][0-9]{0,8}$/.test(ctx.params.number ?? '') ? Number(ctx.params.number) : 0;
  const e = n > 0 ? await ctx.state.deps.store.executions.get(task.id, n) : undefined;
  if (!e) throw notFound(`Execution not found: task ${task.id} has no execution ${ctx.params.number}`);
  return e;
}

/** A follow of one execution's own log. */
const followStart = (e: Execution): FollowStart => ({ taskId: e.taskId, execution: e.number, attempt: e.attempt, status: e.outcome ?? e.state });

/** A task's executions: every attempt that reached a runner, with its own record and log. */
export function executionsRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  r.get('/projects/:projectId/tasks/:taskId/executions', requireProject, validated(ep('listExecutions')), async (ctx) => {
    const task = await loadTask(ctx);
    ctx.body = { executions: (await ctx.state.deps.store.executions.list(task.id)).map(presentExecution) };
  });

  r.get('/projects/:projectId/tasks/:taskId/executions/:number', requireProject, validated(ep('getExecution')), async (ctx) => {
    ctx.body = presentExecution(await loadExecution(ctx));
  });

  r.get('/projects/:projectId/tasks/:taskId/executions/:number/log', requireProject, validated(ep('getExecutionLog')), async (ctx) => {
    const e = await loadExecution(ctx);
    const q = ctx.state.query!;
    const stream = q.stream as 'stdout' | 'stderr' | undefined;
    const logs = ctx.state.deps.store.executions;
    const mode = logMode(ctx);
    if (mode !== 'whole') {
      const from = startOffset(ctx.get('Last-Event-ID') || undefined, q.offset);
      answerFollow(ctx, ctx.state.deps.feed, followStart(e), from, mode, stream);
      return;
    }
    ctx.type = 'text/plain; charset=utf-8';
    if (stream || !flag(q, 'split')) {
      ctx.body = await logs.log(e.taskId, e.attempt, stream);
      return;
    }
    const [out, err] = await Promise.all([logs.log(e.taskId, e.attempt, 'stdout'), logs.log(e.taskId, e.attempt, 'stderr')]);
    ctx.body = Buffer.concat([out, Buffer.from(SPLIT), err]);
  });

  r.get('/projects/:projectId/tasks/:taskId/executions/:number/stream', validated(ep('executionStreamPage')), answerStreamPage);

  r.get('/projects/:projectId/tasks/:taskId/executions/:number/log/ws', requireProject, validated(ep('followExecutionLogSocket')), async (ctx) => {
    const e = await loadExecution(ctx);
    const q = ctx.state.query as { offset?: number; format?: string; stream?: 'stdout' | 'stderr' };
    takeUpgrade(ctx, ctx.state.deps.feed, followStart(e), q.offset ?? 0, { json: q.format === 'json', ...(q.stream ? { stream: q.stream } : {}) });
  });

  r.post('/projects/:projectId/tasks/:taskId/executions/:number/stop', requireProject, validated(ep('stopExecution')), async (ctx) => {
    const e = await loadExecution(ctx);
    if (!e.current || e.state === 'done') {
      const why = e.state === 'done' ? `it ended ${e.outcome ?? ''}`.trim() : 'a later execution of the task runs';
      throw new HttpError(409, `Execution ${e.number} is not running (${why}); only the running execution can be stopped`, { code: 'conflict' });
    }
    ctx.body = { msg: await cancelTask(ctx, e.taskId) };
  });

  return r;
}
