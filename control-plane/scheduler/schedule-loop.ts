import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { Store } from '../store/index.ts';

/**
 * Fires due schedules into queued tasks (leader work). Each firing is fenced by the
 * leader's term and unique per (schedule, period), so neither a stale leader nor two
 * leaders at once can fire a period twice.
 */
export function scheduleJob(o: { store: Store; clock: Clock; everyMs: number; log: Logger; onFired?: () => void }): LeaderJob {
  return {
    name: 'schedules',
    everyMs: o.everyMs,
    async tick(fence, signal) {
      let fired: number;
      do {
        fired = await o.store.schedules.fireDue(o.clock.now(), 100, fence);
        if (fired > 0) {
          o.log.info({ fired }, 'schedules fired');
          o.onFired?.();
        }
      } while (fired >= 100 && !signal.aborted);
    },
  };
}

/**
 * Delayed-task promotion (leader work): tasks whose delay (or retry delay) has just passed
 * become eligible; every replica is told so its idle runners get them now rather than at
 * its next safety-net tick.
 */
export function promotionJob(o: { store: Store; clock: Clock; everyMs: number; onReady: (cluster: string) => void }): LeaderJob {
  let since: Date | undefined;
  return {
    name: 'promotion',
    everyMs: o.everyMs,
    async tick() {
      const now = o.clock.now();
      const from = since ?? new Date(now.getTime() - o.everyMs);
      for (const cluster of await o.store.tasks.clustersEligibleBetween(from, now)) o.onReady(cluster);
      since = now;
    },
  };
}
