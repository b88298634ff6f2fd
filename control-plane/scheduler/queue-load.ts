import type { Clock } from '../../lib/clock.ts';
import type { Logger } from '../../lib/logger.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { Store } from '../store/index.ts';

const HOUR_MS = 3_600_000;
/** Hours one pass rolls up at most (a leader back after a long outage catches up over a few passes). */
const ROLL_UP_HOURS = 24;

/**
 * Records the queue's load (leader work): at every instant that starts an interval (UTC
 * multiples of `intervalS`) the tasks per project, code package and priority in each state,
 * and per cluster the autoscaler's demand and fleet (store/queue-load.ts); once an hour is
 * over, its roll-up. The job looks often (a tenth of the interval, at least every second)
 * and records only when a new instant has begun, so its own drift never skips an interval,
 * and a new leader records the current instant at its first tick: after a failover the
 * series misses at most the election (one etcd TTL) plus one interval. Instants are keys,
 * so an instant the old leader recorded is not recorded again.
 */
export function queueLoadJob(o: { store: Store; clock: Clock; intervalS: number; aliveMs: number; log: Logger }): LeaderJob {
  const intervalMs = o.intervalS * 1000;
  let last = -Infinity;
  let rolled = -Infinity;
  return {
    name: 'queue-load',
    everyMs: Math.max(50, Math.min(1000, Math.floor(intervalMs / 10))),
    async tick(fence) {
      const at = Math.floor(o.clock.now().getTime() / intervalMs) * intervalMs;
      if (at <= last) return;
      const r = await o.store.queueLoad.record(new Date(at), o.aliveMs, fence);
      last = at;
      if (r.recorded) o.log.debug({ at: new Date(at).toISOString(), series: r.series, clusters: r.clusters }, 'queue load recorded');
      const hour = Math.floor(at / HOUR_MS) * HOUR_MS;
      if (hour > rolled) {
        const hours = await o.store.queueLoad.rollUp(new Date(hour), ROLL_UP_HOURS, fence);
        if (hours > 0) o.log.info({ hours, before: new Date(hour).toISOString() }, 'queue load rolled up');
        if (hours < ROLL_UP_HOURS) rolled = hour;
      }
    },
  };
}
