import { answerFollow, answerStreamPage, logMode, startOffset } from '../log-follow.ts';
import { takeUpgrade } from '../log-socket.ts';
import Router, { type RouterContext } from '@koa/router';
import { isId } from '../../../lib/ids.ts';
import { HttpError, badRequest, notFound } from '../../errors.ts';
import type { Code, TaskStatus } from '../../store/codes.ts';
import { TASK_STATUSES } from '../../store/codes.ts';
import type { NewTask, Task } from '../../store/tasks.ts';
import { requireProject } from '../auth.ts';
import { readRaw } from '../body.ts';
import { ep } from '../schema/index.ts';
import { validated } from '../schema/endpoint.ts';
import { MAX_PAYLOAD, type RunInput, type TaskInput } from '../schema/tasks.ts';
import { textProblem } from '../../../lib/text.ts';
import { presentTask } from '../present.ts';
import { HooksChecker } from '../hooks.ts';
import { resolveHooks } from '../../store/hooks.ts';
import { ROUTER_OPTIONS, type ApiDeps, type ApiState } from '../state.ts';
import { flag, optTime, pagination } from '../validate.ts';


/** The timeout ceiling of a cluster: higher for configured long-running clusters. */
export function maxTimeoutFor(deps: ApiDeps, cluster: string): number {
  return deps.config.clusterMaxTimeouts[cluster] ?? deps.config.maxTimeout;
}

/**
 * Options shared by queued tasks, webhooks and schedules, with their defaults. The schema
 * (RunOptions) has bounded each; what it cannot know is the cluster's timeout ceiling, an
 * operator setting.
 */
export function parseRunOptions(deps: ApiDeps, o: RunInput, prefix: string, code: Code) {
  const cluster = o.cluster || 'default';
  const ceiling = maxTimeoutFor(deps, cluster);
  if (typeof o.timeout === 'number' && o.timeout > ceiling) {
    throw badRequest(`${prefix}timeout must be an integer from 1 to ${ceiling}, got ${o.timeout}`);
  }
  return {
    cluster,
    priority: o.priority ?? code.defaultPriority,
    timeout: o.timeout ?? Math.min(deps.config.maxTimeout, ceiling),
    delay: o.delay ?? 0,
    label: o.label ?? null,
  };
}

/**
 * Checks that the user may queue onto every cluster named (own, shared to them, an operator
 * cluster, or `default`): 403 for another user's cluster, 400 for a name no live cluster has
 * (a task queued there would wait forever). Returns each reference's cluster name (a task may name its cluster by
 * id; it is stored by name, which is what runners are matched on).
 */
export async function authorizeClusters(deps: ApiDeps, userId: string, refs: { cluster: string; field: string }[]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  for (const { cluster, field } of refs) {
    if (out.has(cluster)) continue;
    const t = await deps.store.clusters.queueTarget(userId, cluster);
    if (t.kind === 'forbidden') {
      throw new HttpError(403, `${field}: cluster ${JSON.stringify(cluster)} belongs to another user and is not shared with you`, { code: 'forbidden' });
    }
    if (t.kind === 'unknown') {
      throw badRequest(`${field}: no cluster named ${JSON.stringify(cluster)}; create it with POST /2/clusters, or use "default"`);
    }
    out.set(cluster, t.kind === 'ok' ? t.name : cluster);
  }
  return out;
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A webhook body as the payload, byte for byte. Payloads are text, so bytes that text
 * cannot hold exactly (invalid UTF-8, NUL) are refused rather than silently replaced.
 */
export function webhookPayload(raw: Buffer): string {
  let s: string;
  try {
    s = strictUtf8.decode(raw);
  } catch {
    throw badRequest('The webhook body is the task payload and must be UTF-8 text');
  }
  const problem = textProblem(s);
  if (problem) throw badRequest(`The webhook body is the task payload and ${problem}`);
  return s;
}

/** Resolves code names to their packages; 404 naming the field for an unknown one. */
export async function resolveCodes(deps: ApiDeps, projectId: string, names: { name: string; field: string }[]) {
  const out = new Map<string, Code>();
  for (const { name, field } of names) {
    if (out.has(name)) continue;
    const code = await deps.store.codes.getByName(projectId, name);
    if (!code) throw notFound(`${field}: no code package named ${JSON.stringify(name)} in this project`);
    out.set(name, code);
  }
  return out;
}

/** A task to queue of `code`'s latest revision. */
export function newTask(projectId: string, code: Code, payload: string, opts: ReturnType<typeof parseRunOptions>): NewTask {
  return {
    projectId,
    codeId: code.id,
    codeName: code.name,
    revisionId: code.latestRevisionId,
    rev: code.rev,
    retries: code.retries,
    retriesDelay: code.retriesDelay,
    payload,
    hooks: code.hooks,
    ...opts,
  };
}

/** The task `:taskId` of the request's project, or 404. */
export async function loadTask(ctx: RouterContext<ApiState>): Promise<Task> {
  const id = ctx.params.taskId ?? '';
  const task = isId(id) ? await ctx.state.deps.store.tasks.get(ctx.state.projectId!, id) : undefined;
  if (!task) throw notFound('Task not found');
  return task;
}

/**
 * Cancels a task of the request's project: a queued one at once, a running one by asking
 * its runner (the outcome then comes from the runner). The reply's msg; a 400 for a task
 * that already ended otherwise.
 */
export async function cancelTask(ctx: RouterContext<ApiState>, taskId: string): Promise<string> {
  const out = await ctx.state.deps.store.tasks.cancel(ctx.state.projectId!, taskId);
  if (!out) throw notFound('Task not found');
  if (out.kind === 'final') {
    if (out.task.status === 'cancelled') return 'Cancelled';
    throw badRequest(`Task already finished with status ${out.task.status}; only queued or running tasks can be cancelled`);
  }
  ctx.state.log.info({ taskId, kind: out.kind }, 'task cancel');
  if (out.kind === 'cancelling' && out.task.runnerId) ctx.state.deps.hub.cancelRequested(out.task.runnerId);
  return out.kind === 'cancelled' ? 'Cancelled' : 'Cancellation requested';
}

export function tasksRouter(): Router<ApiState> {
  const r = new Router<ApiState>(ROUTER_OPTIONS);

  r.get('/projects/:projectId/tasks', requireProject, validated(ep('listTasks')), async (ctx) => {
    const q = ctx.state.query!;
    const statuses = TASK_STATUSES.filter((s) => flag(q, s)) as TaskStatus[];
    const codeName = q.code_name as string | undefined;
    const tasks = await ctx.state.deps.store.tasks.list(
      ctx.state.projectId!,
      {
        ...(codeName ? { codeName } : {}),
        statuses,
        from: optTime(q, 'from_time', 'from_time'),
        to: optTime(q, 'to_time', 'to_time'),
      },
      pagination(q),
    );
    const waiting = await ctx.state.deps.store.tasks.waitReasons(tasks.filter((x) => x.status === 'queued').map((x) => x.id));
    ctx.body = { tasks: tasks.map((x) => presentTask(x, waiting.get(x.id))) };
  });

  r.post('/projects/:projectId/tasks', requireProject, validated(ep('queueTasks')), async (ctx) => {
    const { deps, projectId } = ctx.state;
    const body = ctx.state.body!;
    // The schema (QueueTasksBody) holds 1 to MAX_BATCH objects, each with a code_name.
    const items = (body.tasks as TaskInput[]).map((o, i) => ({ o, prefix: `tasks[${i}].`, name: o.code_name! }));
    const codes = await resolveCodes(
      deps,
      projectId!,
      items.map((x) => ({ name: x.name, field: `${x.prefix}code_name` })),
    );
    const tasks = items.map(({ o, prefix, name }) => {
      const code = codes.get(name)!;
      return newTask(projectId!, code, o.payload ?? '', parseRunOptions(deps, o, prefix, code));
    });
    const clusters = await authorizeClusters(deps, ctx.state.userId!, tasks.map((t, i) => ({ cluster: t.cluster, field: `tasks[${i}].cluster` })));
    for (const t of tasks) t.cluster = clusters.get(t.cluster)!;
    const hooks = new HooksChecker(deps, projectId!);
    for (const [i, { o, prefix, name }] of items.entries()) {
      if (o.webhooks || o.notify) tasks[i]!.hooks = resolveHooks(await hooks.accept(o, prefix), codes.get(name)!.hooks);
    }
    const ids = await deps.hub.enqueue(tasks);
    ctx.body = { msg: 'Queued up', tasks: ids.map((id) => ({ id })) };
  });

  r.post('/projects/:projectId/tasks/webhook', requireProject, validated(ep('queueTaskWebhook')), async (ctx) => {
    const { deps, projectId } = ctx.state;
    const q = ctx.state.query as RunInput & { code_name: string };
    const name = q.code_name;
    const code = (await resolveCodes(deps, projectId!, [{ name, field: 'code_name' }])).get(name)!;
    const opts = parseRunOptions(deps, q, '', code);
    opts.cluster = (await authorizeClusters(deps, ctx.state.userId!, [{ cluster: opts.cluster, field: 'cluster' }])).get(opts.cluster)!;
    const payload = webhookPayload(await readRaw(ctx, MAX_PAYLOAD));
    const [id] = await deps.hub.enqueue([newTask(projectId!, code, payload, opts)]);
    ctx.body = { id, msg: 'Queued up.' };
  });

  r.get('/projects/:projectId/tasks/:taskId', requireProject, validated(ep('getTask')), async (ctx) => {
    const task = await loadTask(ctx);
    const waiting = task.status === 'queued' ? (await ctx.state.deps.store.tasks.waitReasons([task.id])).get(task.id) : undefined;
    ctx.body = presentTask(task, waiting);
  });

  r.get('/projects/:projectId/tasks/:taskId/log', requireProject, validated(ep('getTaskLog')), async (ctx) => {
    const task = await loadTask(ctx);
    const stream = ctx.state.query!.stream;
    if (stream !== undefined && stream !== 'stdout' && stream !== 'stderr') {
      throw badRequest('stream must be stdout or stderr (omit it for both, interleaved)');
    }
    const mode = logMode(ctx);
    if (mode !== 'whole') {
      const from = startOffset(ctx.get('Last-Event-ID') || undefined, ctx.state.query!.offset);
      answerFollow(ctx, ctx.state.deps.feed, { taskId: task.id, execution: null, attempt: 'current', status: task.status }, from, mode, stream);
      return;
    }
    ctx.type = 'text/plain; charset=utf-8';
    ctx.body = await ctx.state.deps.store.tasks.log(task.id, stream);
  });

  r.get('/projects/:projectId/tasks/:taskId/stream', validated(ep('taskStreamPage')), answerStreamPage);

  r.get('/projects/:projectId/tasks/:taskId/log/ws', requireProject, validated(ep('followTaskLogSocket')), async (ctx) => {
    const task = await loadTask(ctx);
    const q = ctx.state.query as { offset?: number; format?: string; stream?: 'stdout' | 'stderr' };
    takeUpgrade(ctx, ctx.state.deps.feed, { taskId: task.id, execution: null, attempt: 'current', status: task.status }, q.offset ?? 0, {
      json: q.format === 'json',
      ...(q.stream ? { stream: q.stream } : {}),
    });
  });

  r.post('/projects/:projectId/tasks/:taskId/cancel', requireProject, validated(ep('cancelTask')), async (ctx) => {
    const task = await loadTask(ctx);
    ctx.body = { msg: await cancelTask(ctx, task.id) };
  });

  r.post('/projects/:projectId/tasks/:taskId/progress', requireProject, validated(ep('setTaskProgress')), async (ctx) => {
    const body = ctx.state.body as { percent?: number | null; msg?: string | null };
    const percent = body.percent ?? undefined;
    const msg = body.msg ?? undefined;
    if (percent === undefined && msg === undefined) throw badRequest('percent (0 to 100) or msg is required');
    const task = await loadTask(ctx);
    const updated = await ctx.state.deps.store.tasks.setProgress(ctx.state.projectId!, task.id, percent, msg);
    if (!updated) throw badRequest(`Task already finished with status ${task.status}; progress can only be set while it is queued or running`);
    ctx.body = { msg: 'Progress set' };
  });

  r.post('/projects/:projectId/tasks/:taskId/retry', requireProject, validated(ep('retryTask')), async (ctx) => {
    const { deps } = ctx.state;
    const delay = (ctx.state.body as { delay?: number | null }).delay ?? 0;
    const task = await loadTask(ctx);
    await authorizeClusters(deps, ctx.state.userId!, [{ cluster: task.cluster, field: 'cluster' }]);
    const id = await deps.store.tasks.retry(ctx.state.projectId!, task.id, delay);
    if (!id) throw badRequest(`Task is ${task.status}; only finished tasks can be retried`);
    deps.hub.tasksReady(task.cluster);
    ctx.body = { msg: 'Queued up', tasks: [{ id }] };
  });

  return r;
}
