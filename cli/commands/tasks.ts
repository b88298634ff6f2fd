/** The task verbs: queue (and --wait), status, log (and -f), cancel, retry. */
import type { ApiClient } from '../api.ts';
import type { Context } from '../context.ts';
import { CliUsageError, TaskFailedError } from '../errors.ts';
import { followTaskLog } from '../follow.ts';

/** The flags of the task a command queues (`payloadFile` holds the file's text): queue's, and each of a schedule's tasks. */
export interface TaskFlags {
  payload?: string;
  payloadFile?: string;
  priority?: number;
  timeout?: number;
  delay?: number;
  cluster?: string;
  label?: string;
}

/** `gantry queue`'s flags, as commander names them. */
export interface QueueOptions extends TaskFlags {
  wait?: boolean;
}

/** How often --wait on a terminal looks at the task for a changed status message. */
const STATUS_POLL_MS = 1000;

/** POST .../tasks with one task; prints its id, or with --wait follows it to its end. */
export async function queue(ctx: Context, code: string, o: QueueOptions): Promise<void> {
  if (o.payload !== undefined && o.payloadFile !== undefined) throw new CliUsageError('give --payload or --payload-file, not both');
  const api = ctx.api();
  const task: Record<string, unknown> = { code_name: code };
  const payload = o.payloadFile ?? o.payload;
  if (payload !== undefined) task.payload = payload;
  for (const [k, v] of [['priority', o.priority], ['timeout', o.timeout], ['delay', o.delay], ['cluster', o.cluster], ['label', o.label]] as const) {
    if (v !== undefined) task[k] = v;
  }
  const reply = await api.request('POST', api.project('/tasks'), { json: { tasks: [task] } });
  const id = String(reply.body.tasks[0].id);
  if (!o.wait) {
    if (ctx.json) ctx.printJson(reply.text);
    else ctx.print(id);
    return;
  }
  ctx.progress(`queued task ${id} (${code})`);
  await waitFor(ctx, api, id);
}

/**
 * Follows a task to its end: its log to stdout as it comes (not under --json, which prints
 * the final task instead), its status changes to stderr on a terminal; a task that did not
 * complete is a TaskFailedError (exit 1).
 */
async function waitFor(ctx: Context, api: ApiClient, id: string): Promise<void> {
  const started = Date.now();
  const stop = new AbortController();
  let lastMsg: string | undefined;
  const poll = ctx.io.stderr.isTTY
    ? (async () => {
        while (!stop.signal.aborted) {
          await new Promise((r) => setTimeout(r, STATUS_POLL_MS));
          if (stop.signal.aborted) break;
          try {
            const t = (await api.request('GET', api.project(`/tasks/${id}`))).body;
            if (t.status === 'queued' && t.msg && t.msg !== lastMsg) ctx.progress(`  waiting: ${t.msg}`);
            lastMsg = t.msg;
          } catch {
            // The follow reports a server that went away; this is decoration only.
          }
        }
      })()
    : Promise.resolve();
  let end;
  try {
    end = await followTaskLog(api, id, {
      text: (_stream, text) => {
        if (!ctx.json) ctx.io.stdout.write(text);
      },
      status: (s) => ctx.progress(`task ${id}: ${s} (${((Date.now() - started) / 1000).toFixed(1)} s)`),
      note: (line) => ctx.progress(line),
    });
  } finally {
    stop.abort();
    await poll;
  }
  const final = await api.request('GET', api.project(`/tasks/${id}`));
  if (ctx.json) ctx.printJson(final.text);
  if (end.status !== 'complete') throw new TaskFailedError(id, end.status, final.body.msg);
}

/** `gantry worker status`: GET .../tasks/{id}, a line per field. */
export async function status(ctx: Context, id: string): Promise<void> {
  const api = ctx.api();
  const reply = await api.request('GET', api.project(`/tasks/${encodeURIComponent(id)}`));
  if (ctx.json) return ctx.printJson(reply.text);
  const t = reply.body;
  const lines: [string, unknown][] = [
    ['id', t.id],
    ['code', `${t.code_name} (revision ${t.code_rev})`],
    ['status', t.status],
    ['msg', t.msg],
    ['created', t.created_at],
    ['started', t.start_time],
    ['ended', t.end_time],
    ['duration', t.duration !== undefined ? `${t.duration} ms` : undefined],
    ['cluster', t.cluster],
    ['priority', t.priority],
    ['label', t.label],
    ['retry of', t.original_task_id],
    ['retried as', t.retry_task_id],
  ];
  ctx.print(lines.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) => `${`${k}:`.padEnd(12)}${String(v)}`).join('\n'));
}

/** `gantry log`: the whole log now, or (-f) followed until the task ends. */
export async function log(ctx: Context, id: string, o: { follow?: boolean }): Promise<void> {
  if (ctx.json) throw new CliUsageError('a log is text, which --json would not make JSON', { hint: 'leave out --json; gantry worker status TASK_ID --json gives the task' });
  const api = ctx.api();
  if (!o.follow) {
    const res = await api.stream(api.project(`/tasks/${encodeURIComponent(id)}/log`), { headers: { Accept: 'text/plain' } });
    ctx.io.stdout.write(await res.text());
    return;
  }
  await followTaskLog(api, id, {
    text: (_stream, text) => ctx.io.stdout.write(text),
    status: (s) => ctx.progress(`task ${id}: ${s}`),
    note: (line) => ctx.progress(line),
  });
}

/** `gantry cancel`: POST .../tasks/{id}/cancel. */
export async function cancel(ctx: Context, id: string): Promise<void> {
  const api = ctx.api();
  const reply = await api.request('POST', api.project(`/tasks/${encodeURIComponent(id)}/cancel`), { json: {} });
  if (ctx.json) return ctx.printJson(reply.text);
  ctx.print(`task ${id}: ${reply.body.msg}`);
}

/** `gantry retry`: POST .../tasks/{id}/retry; prints the new task's id. */
export async function retry(ctx: Context, id: string, o: { delay?: number }): Promise<void> {
  const api = ctx.api();
  const reply = await api.request('POST', api.project(`/tasks/${encodeURIComponent(id)}/retry`), { json: o.delay === undefined ? {} : { delay: o.delay } });
  if (ctx.json) return ctx.printJson(reply.text);
  ctx.print(String(reply.body.tasks[0].id));
}
