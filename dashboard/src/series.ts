import { api } from './api.ts';

/** The API's series pages hold at most this many points. */
const PER_PAGE = 1000;
/** Pages asked for at once. */
const PARALLEL = 6;

/**
 * Every point of a paged series endpoint (GET .../load: `{count, results}`, oldest first) over
 * a range: the first page says how many there are, the rest are fetched a few at a time.
 */
export async function allPoints<T>(path: string, query: Record<string, string | number>, signal: AbortSignal): Promise<T[]> {
  const first = await api<{ count: number; results: T[] }>(path, { signal, query: { ...query, page: 0, per_page: PER_PAGE } });
  const pages = Math.ceil(first.count / PER_PAGE);
  const out: T[][] = [first.results];
  for (let p = 1; p < pages; p += PARALLEL) {
    const batch = [];
    for (let q = p; q < Math.min(pages, p + PARALLEL); q++) {
      batch.push(api<{ results: T[] }>(path, { signal, query: { ...query, page: q, per_page: PER_PAGE } }).then((r) => r.results));
    }
    out.push(...(await Promise.all(batch)));
  }
  return out.flat();
}

/**
 * The range of the last `seconds`, as absolute times: every page of one read then counts the
 * same instants (a relative `started` would move between pages as new points are recorded).
 */
export function lastSeconds(seconds: number): { started: string; ended: string } {
  const now = Date.now();
  return { started: new Date(now - seconds * 1000).toISOString(), ended: new Date(now).toISOString() };
}
