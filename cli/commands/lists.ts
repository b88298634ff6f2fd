/** The list commands: codes, tasks, schedules, clusters and runners, one line each (or the API's JSON). */
import { table, type Context } from '../context.ts';

/** `--page` and `--per-page`. */
export interface PageOptions {
  page?: number;
  perPage?: number;
}

/** The final statuses and the others, as `gantry tasks` filters them. */
export const TASK_STATUSES = ['queued', 'running', 'complete', 'error', 'cancelled', 'killed', 'timeout'] as const;

/** `gantry codes`: GET .../codes. */
export async function codes(ctx: Context, o: PageOptions): Promise<void> {
  const api = ctx.api();
  const reply = await api.request('GET', api.project('/codes'), { query: { page: o.page, per_page: o.perPage } });
  if (ctx.json) return ctx.printJson(reply.text);
  const rows = (reply.body.codes as any[]).map((c) => [c.id, c.name, `rev ${c.rev}`, c.image, c.command, c.paused ? 'paused' : '', c.latest_change]);
  ctx.print(rows.length ? table([['ID', 'NAME', 'REVISION', 'IMAGE', 'COMMAND', 'PAUSED', 'CHANGED'], ...rows]) : '(no code packages)');
}

/** `gantry tasks`' filters. */
export interface TaskListOptions extends PageOptions, Partial<Record<(typeof TASK_STATUSES)[number], boolean>> {
  code?: string;
  from?: string;
  to?: string;
}

/** `gantry tasks`: GET .../tasks with the status, code and time filters. */
export async function tasks(ctx: Context, o: TaskListOptions): Promise<void> {
  const api = ctx.api();
  const query: Record<string, string | number | undefined> = { page: o.page, per_page: o.perPage, code_name: o.code, from_time: o.from, to_time: o.to };
  for (const s of TASK_STATUSES) if (o[s]) query[s] = 1;
  const reply = await api.request('GET', api.project('/tasks'), { query });
  if (ctx.json) return ctx.printJson(reply.text);
  const rows = (reply.body.tasks as any[]).map((t) => [t.id, t.code_name, t.status, t.created_at, t.duration !== undefined ? `${t.duration} ms` : '', t.msg]);
  ctx.print(rows.length ? table([['ID', 'CODE', 'STATUS', 'CREATED', 'DURATION', 'MSG'], ...rows]) : '(no tasks)');
}

/** `gantry schedules`: GET .../schedules. */
export async function schedules(ctx: Context, o: PageOptions): Promise<void> {
  const api = ctx.api();
  const reply = await api.request('GET', api.project('/schedules'), { query: { page: o.page, per_page: o.perPage } });
  if (ctx.json) return ctx.printJson(reply.text);
  const rows = (reply.body.schedules as any[]).map((s) => [
    s.id,
    s.code_name,
    s.status,
    s.cron ? `cron ${s.cron}${s.timezone ? ` ${s.timezone}` : ''}` : s.run_every ? `every ${s.run_every} s` : 'once',
    s.next_start,
    `${s.run_count ?? 0}${s.run_times ? `/${s.run_times}` : ''} runs`,
  ]);
  ctx.print(rows.length ? table([['ID', 'CODE', 'STATUS', 'WHEN', 'NEXT', 'RUNS'], ...rows]) : '(no schedules)');
}

/** `gantry clusters`: GET /2/clusters (no project needed). */
export async function clusters(ctx: Context): Promise<void> {
  const api = ctx.api({ project: false });
  const reply = await api.request('GET', '/clusters');
  if (ctx.json) return ctx.printJson(reply.text);
  const rows = (reply.body.clusters as any[]).map((c) => [c.id, c.name, `${Math.round(c.memory / 1048576)} MiB`, c.created_at]);
  ctx.print(rows.length ? table([['ID', 'NAME', 'MEMORY', 'CREATED'], ...rows]) : '(no clusters)');
}

/** `gantry runners`: POST /2/workers.get_all (no project needed). */
export async function runners(ctx: Context, o: { lastSeen?: number }): Promise<void> {
  const api = ctx.api({ project: false });
  const reply = await api.request('POST', '/workers.get_all', { json: o.lastSeen === undefined ? {} : { last_seen: o.lastSeen } });
  if (ctx.json) return ctx.printJson(reply.text);
  const rows = (reply.body.workers as any[]).map((w) => [w.id, w.cluster?.name, w.state, w.hostname, `${w.slots?.busy ?? 0}/${w.slots?.total ?? 0}`, w.last_activity_time]);
  ctx.print(rows.length ? table([['ID', 'CLUSTER', 'STATE', 'HOST', 'BUSY', 'LAST SEEN'], ...rows]) : '(no runners)');
}
