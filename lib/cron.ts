import { Cron } from 'croner';

/** A schedule's cron expression or time zone was refused: `field` says which, the message why (for a 400). */
export class CronError extends Error {
  constructor(
    readonly field: 'cron' | 'timezone',
    message: string,
  ) {
    super(message);
  }
}

/** The time zone cron expressions are read in when a schedule gives none. */
export const DEFAULT_TIMEZONE = 'UTC';

/**
 * A five-field cron expression (minute hour day-of-month month day-of-week, or a nickname
 * such as `@hourly`) read in an IANA time zone, parsed by croner. Throws CronError naming
 * what is wrong. Instants are whole minutes; in a daylight-saving gap a time that does not
 * exist fires at the first minute after it, and in the repeated hour a time fires once.
 */
export function parseCron(expression: string, timezone: string = DEFAULT_TIMEZONE): Cron {
  if (!isTimeZone(timezone)) throw new CronError('timezone', `unknown time zone ${JSON.stringify(timezone)}: give an IANA name such as "Europe/Berlin" or "UTC"`);
  let cron: Cron;
  let fires: boolean;
  try {
    cron = new Cron(expression, { timezone, paused: true, mode: '5-part' });
    fires = cron.nextRun(new Date(0)) !== null;
  } catch (err) {
    throw new CronError('cron', (err as Error).message.replace(/^CronPattern: /, ''));
  }
  // A pattern that can never fire (February 30th) is refused too.
  if (!fires) throw new CronError('cron', `${JSON.stringify(expression)} never fires`);
  return cron;
}

/** Whether `tz` is an IANA time zone this runtime knows. */
export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

/** The first fire instant strictly after `after`, or null when there is none. */
export function cronAfter(cron: Cron, after: Date): Date | null {
  return cron.nextRun(after);
}

/** How a schedule repeats: every `runEvery` seconds from startAt, or at a cron expression's instants from startAt on. */
export interface Repeat {
  startAt: Date;
  runEvery: number | null;
  cron: string | null;
  timezone: string | null;
}

/** The period boundary strictly after `now` (and after startAt), or null for a schedule that runs once. */
export function nextFireAfter(r: Repeat, now: Date): Date | null {
  if (r.cron !== null) {
    // The first fire is at or after startAt: a fire exactly at startAt counts.
    const from = new Date(Math.max(now.getTime(), r.startAt.getTime() - 1));
    return cronAfter(parseCron(r.cron, r.timezone ?? DEFAULT_TIMEZONE), from);
  }
  if (r.runEvery === null) return null;
  const step = r.runEvery * 1000;
  const k = Math.floor((now.getTime() - r.startAt.getTime()) / step) + 1;
  return new Date(r.startAt.getTime() + Math.max(k, 1) * step);
}

/** The first fire of a new schedule: startAt itself for an interval or a single run, the first cron instant at or after it otherwise. */
export function firstFire(r: Repeat): Date | null {
  if (r.cron === null) return r.startAt;
  return nextFireAfter(r, new Date(r.startAt.getTime() - 1));
}

/**
 * The next `n` fire instants from `next` on (itself included), bounded by endAt and by the
 * runs left; what the API shows as `next_fires`.
 */
export function upcomingFires(r: Repeat & { endAt: Date | null; runsLeft: number | null }, next: Date | null, n = 5): Date[] {
  const out: Date[] = [];
  let at = next;
  const most = Math.min(n, r.runsLeft ?? n);
  while (at !== null && out.length < most && (r.endAt === null || at <= r.endAt)) {
    out.push(at);
    if (r.cron === null && r.runEvery === null) break;
    at = nextFireAfter(r, at);
  }
  return out;
}
