import { badRequest } from '../errors.ts';

/**
 * Readers of request values the endpoint's schema has already checked (schema/endpoint.ts):
 * what remains is turning them into the program's terms, and what a schema cannot say
 * (a calendar day that exists). A failure is a 400 whose message names the field.
 */
export type Obj = Record<string, unknown>;

/** 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z. */
const MIN_TIME = -62135596800000;
const MAX_TIME = 253402300799999;
/**
 * Whether an RFC 3339 text names a day and time that exist: JavaScript reads 2026-02-30 as
 * March 2 and 24:00 as the next day, where the sender almost surely made a mistake.
 */
function onTheCalendar(v: string): boolean {
  const [y, mo, d] = [Number(v.slice(0, 4)), Number(v.slice(5, 7)), Number(v.slice(8, 10))];
  const days = new Date(Date.UTC(2000, mo, 0)).getUTCDate() - (mo === 2 && !(y % 4 === 0 && (y % 100 !== 0 || y % 400 === 0)) ? 1 : 0);
  if (mo < 1 || mo > 12 || d < 1 || d > days) return false;
  if (v.length <= 10) return true;
  const [h, mi, sec] = [Number(v.slice(11, 13)), Number(v.slice(14, 16)), v.length > 17 && v[16] === ':' ? Number(v.slice(17, 19)) : 0];
  const off = /[+-](\d{2}):?(\d{2})$/.exec(v.slice(16));
  return h <= 23 && mi <= 59 && sec <= 59 && (!off || (Number(off[1]) <= 23 && Number(off[2]) <= 59));
}

export function optTime(o: Obj, key: string, field: string): Date | undefined {
  const v = o[key];
  if (v === undefined || v === null || v === '') return undefined;
  let d: Date | undefined;
  if (typeof v === 'number' && Number.isFinite(v)) d = new Date(v * 1000);
  else if (typeof v === 'string' && /^\d+$/.test(v)) d = new Date(Number(v) * 1000);
  else if (typeof v === 'string' && /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$/i.test(v) && onTheCalendar(v)) {
    d = new Date(v);
  }
  // Years 0001 to 9999: what RFC 3339 can write and PostgreSQL reads back the same.
  if (!d || Number.isNaN(d.getTime()) || d.getTime() < MIN_TIME || d.getTime() > MAX_TIME) {
    throw badRequest(`${field} must be an RFC 3339 time (e.g. 2026-01-02T15:04:05Z) or seconds since the epoch, from year 1 to 9999`);
  }
  return d;
}

/** Query parameter `page` (0–100, default 0) and `per_page` (1–100, default 30). */
export function pagination(query: Obj): { page: number; perPage: number } {
  return { page: (query.page as number | undefined) ?? 0, perPage: (query.per_page as number | undefined) ?? 30 };
}

/** A status filter given as `1` or `true` (IronWorker clients send either). */
export function flag(query: Obj, key: string): boolean {
  const v = query[key];
  const s = Array.isArray(v) ? v[v.length - 1] : v;
  return typeof s === 'string' && /^(1|true)$/i.test(s);
}
