import type { Logger } from '../../lib/logger.ts';
import type { ControlPlaneConfig } from '../config.ts';
import type { LeaderJob } from '../coord/leader.ts';
import type { Coordinator } from '../coord/types.ts';
import type { Dispatcher } from '../dispatch/dispatcher.ts';
import type { ControlPlaneMetrics } from '../metrics.ts';
import type { Store } from '../store/index.ts';

/**
 * The lease sweeper (leader work): returns expired offers to the queue, reclaims leases of
 * runners silent past the lease TTL, and backstops task timeouts: a running task past its
 * timeout (plus the cancel grace) is cancelled through its runner — whichever replica holds
 * its stream — or timed out here when its runner is connected nowhere.
 */
export function leaseSweeperJob(o: {
  store: Store;
  config: ControlPlaneConfig;
  dispatcher: Dispatcher;
  coord: Coordinator;
  metrics: ControlPlaneMetrics;
  log: Logger;
}): LeaderJob {
  const { store, config, dispatcher, coord, metrics, log } = o;
  const cfg = { leaseTtlMs: config.timers.leaseTtlMs, runnerLossBudget: config.runnerLossBudget };
  return {
    name: 'lease-sweeper',
    everyMs: config.sweepIntervalMs,
    async tick(fence, signal) {
      const r = await store.leases.sweep(cfg, 500, fence);
      if (r.expiredOffers) metrics.offerResults.inc({ result: 'expired' }, r.expiredOffers);
      if (r.reclaimed) metrics.reclaimed.inc({ reason: 'runner_lost' }, r.reclaimed);
      if (r.killed) metrics.reclaimed.inc({ reason: 'runner_lost_final' }, r.killed);
      if (r.expiredOffers || r.reclaimed || r.killed) {
        log.info(r, 'leases swept');
        dispatcher.wake('*');
        coord.publish({ type: 'ready', cluster: '*' });
      }
      for (const l of await store.leases.overdue(config.timers.cancelGraceMs)) {
        if (signal.aborted) return;
        const s = dispatcher.session(l.runner_id);
        if (s && s.state !== 'closed') {
          s.cancelForTimeout(l.lease_id, l.attempt);
          await store.leases.markCancelSent(l.lease_id);
        } else if (await store.runners.connectedRecently(l.runner_id, config.timers.sessionDeadAfterMs)) {
          coord.publish({ type: 'timeout', runnerId: l.runner_id, leaseId: l.lease_id, attempt: l.attempt });
          await store.leases.markCancelSent(l.lease_id);
        } else if (await store.leases.timeOut(l.lease_id, l.attempt, fence)) {
          log.warn({ leaseId: l.lease_id }, 'task timed out while its runner was away');
          dispatcher.wake('*');
        }
      }
    },
  };
}
