/** `gantry schedule CODE`: a schedule that queues CODE at times (run_every or cron), and `gantry schedules`. */
import type { Context } from '../context.ts';
import { CliUsageError } from '../errors.ts';
import type { TaskFlags } from './tasks.ts';

/** `gantry schedule`'s flags, as commander names them. */
export interface ScheduleOptions extends TaskFlags {
  startAt?: string;
  endAt?: string;
  runEvery?: number;
  runTimes?: number;
  cron?: string;
  timezone?: string;
}

/** POST .../schedules with one schedule; prints its id. */
export async function schedule(ctx: Context, code: string, o: ScheduleOptions): Promise<void> {
  if (o.runEvery !== undefined && o.cron !== undefined) throw new CliUsageError('give --run-every or --cron, not both');
  if (o.timezone !== undefined && o.cron === undefined) throw new CliUsageError('--timezone is the zone of --cron: give --cron too');
  if (o.payload !== undefined && o.payloadFile !== undefined) throw new CliUsageError('give --payload or --payload-file, not both');
  const api = ctx.api();
  const s: Record<string, unknown> = { code_name: code };
  const fields = [
    ['start_at', o.startAt],
    ['end_at', o.endAt],
    ['run_every', o.runEvery],
    ['run_times', o.runTimes],
    ['cron', o.cron],
    ['timezone', o.timezone],
    ['payload', o.payloadFile ?? o.payload],
    ['priority', o.priority],
    ['timeout', o.timeout],
    ['delay', o.delay],
    ['cluster', o.cluster],
    ['label', o.label],
  ] as const;
  for (const [k, v] of fields) if (v !== undefined) s[k] = v;
  const reply = await api.request('POST', api.project('/schedules'), { json: { schedules: [s] } });
  if (ctx.json) return ctx.printJson(reply.text);
  ctx.print(String(reply.body.schedules[0].id));
}

/** `gantry unschedule`: POST .../schedules/{id}/cancel. */
export async function cancelSchedule(ctx: Context, id: string): Promise<void> {
  const api = ctx.api();
  const reply = await api.request('POST', api.project(`/schedules/${encodeURIComponent(id)}/cancel`), { json: {} });
  if (ctx.json) return ctx.printJson(reply.text);
  ctx.print(`schedule ${id}: ${reply.body.msg}`);
}
