import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { Store } from '../store/index.ts';

const MINUTE = 60_000;
const HOUR = 3_600_000;
/** Roll-up transactions cover at most this much time each, so one never holds locks long. */
const MAX_CHUNK_MS = HOUR;

const floorTo = (ms: number, unit: number) => Math.floor(ms / unit) * unit;

/** Where a roll-up that never ran starts: the oldest row's bucket, or nowhere (`none`) on an empty table. */
async function startOf(oldest: Promise<Date | null>, unit: number, none: number): Promise<number> {
  const d = await oldest;
  return d ? floorTo(d.getTime(), unit) : none;
}

/**
 * The roll-ups of recorded machine stats (leader work): raw samples into minutes, minutes
 * into hours, each an hour of data per fenced transaction, from where the last roll-up got
 * to. A minute is rolled up once `lagMs` has passed since its end (samples reach the table
 * up to a flush interval after their window, from every replica); an hour once its minutes
 * are. The same tick removes third-party workers whose registration timed out.
 */
export function rollupJob(o: { store: Store; clock: Clock; statsIntervalS: number; log: Logger; everyMs?: number }): LeaderJob {
  const { store, clock, log } = o;
  const lagMs = 2 * o.statsIntervalS * 1000 + 10_000;
  return {
    name: 'stats-rollup',
    everyMs: o.everyMs ?? MINUTE,
    async tick(fence, signal) {
      const now = clock.now().getTime();
      const wm = await store.series.watermarks();
      let minutes = 0;
      let hours = 0;
      // Raw into minutes.
      const mTarget = floorTo(now - lagMs, MINUTE);
      let from: number = wm.m ? wm.m.getTime() : await startOf(store.series.oldestRaw(), MINUTE, mTarget);
      while (from < mTarget && !signal.aborted) {
        const to = Math.min(mTarget, from + MAX_CHUNK_MS);
        minutes += await store.series.rollUp('1m', new Date(from), new Date(to), fence);
        from = to;
      }
      // Minutes into hours, up to the last whole hour whose minutes are all rolled up.
      const hTarget = floorTo(from, HOUR);
      let hFrom: number = wm.h ? wm.h.getTime() : await startOf(store.series.oldestMinute(), HOUR, hTarget);
      while (hFrom < hTarget && !signal.aborted) {
        const to = Math.min(hTarget, hFrom + MAX_CHUNK_MS);
        hours += await store.series.rollUp('1h', new Date(hFrom), new Date(to), fence);
        hFrom = to;
      }
      const expired = await store.workers.expireExternal();
      if (minutes + hours + expired > 0) log.debug({ minutes, hours, expired }, 'stats roll-up');
    },
  };
}
